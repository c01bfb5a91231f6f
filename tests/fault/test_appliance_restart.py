"""The appliance restarts under a tethered VM: what an operator may expect.

A real `vic agent` (``tests.fault.agentpath``, the direct path: its Unix socket
into esx-a's pipe ingress, a TCP egress to the appliance) runs a main process
that logs paced lines; `vic console exec -i` runs a ``cat`` in it. The appliance
(`vic vspc`) is killed (SIGKILL; or stopped, SIGTERM) and started again on the
same config:

* the exec in flight ends for its client at once with a clear error (exit 1,
  "the appliance closed before the exit status"), not a hang; the process it
  ran in the guest is gone once the tether learns the session was lost;
* the tether reconnects and gets a new session at once (within 15 s of the
  appliance's READY the main process logs again): it finds the old session lost
  once (one log line), at most 3 streams do it, and no reconnect loop follows
  (more output later, no more streams);
* a new ``exec`` works right after (first try, its output and exit code);
* the main process keeps running: its later lines reach the container log
  files, and no line the appliance had logged before it died is logged again.
  What it wrote while the appliance was away is sent again by the tether (the
  old session's unacknowledged output, held for the new session's attach):
  after an orderly stop (SIGTERM) no line is missing; after a kill only the
  lines the appliance had acknowledged but not yet written, one hole right where
  it died, which it marks in the VM's event log as a ``gap`` (reason ``restart``).

The appliance sits behind each path: direct, the mesh (esx-b ends the streams),
and forward (esx-b forwards the link to the appliance, whose link state dies too);
on the direct path it is also stopped in order (SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fault.agentpath import MAIN_CODE, AgentPath, PathKind
from tests.fault.sessionmesh import VM
from tests.support.daemons import ROOT, Daemons
from tests.support.waiting import wait_until
from vspc.core.linelog import Stream

pytestmark = pytest.mark.slow


def console(p: AgentPath, *args: str) -> list[str]:
    sock = str(p.console_socket)
    return [sys.executable, "-m", "vic.cli", "console", "exec", "--socket", sock, VM, *args]


async def read_until(stream: trio.abc.ReceiveStream, buf: bytearray, want: bytes) -> None:
    while want not in buf:
        data = await stream.receive_some(65536)
        assert data, f"output ended at {bytes(buf)!r}"
        buf += data


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some(65536):
        out += data
    return bytes(out)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def exec_in_flight(p: AgentPath, pidfile: Path) -> trio.Process:
    """``vic console exec -i`` of a ``cat``, once it echoed a line (its guest pid in
    ``pidfile``)."""
    client = await trio.lowlevel.open_process(
        console(p, "-i", "--", "sh", "-c", f'echo $$ > "{pidfile}"; exec cat'),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert client.stdin and client.stdout
    await client.stdin.send_all(b"before\n")
    await read_until(client.stdout, bytearray(), b"before\n")
    return client


async def new_exec_works(p: AgentPath) -> None:
    r = await trio.run_process(
        console(p, "--", "sh", "-c", "echo out; echo err >&2; exit 5"),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=ROOT,
    )
    assert (r.returncode, r.stdout, r.stderr) == (5, b"out\n", b"err\n")


def last(p: AgentPath) -> int:
    nums = p.main_numbers()
    return nums[-1] if nums else 0


@pytest.mark.parametrize(
    ("path", "sig"),
    [
        ("direct", signal.SIGKILL),
        ("mesh", signal.SIGKILL),
        ("forward", signal.SIGKILL),
        ("direct", signal.SIGTERM),
    ],
)
async def test_appliance_killed_and_started_again(
    tmp_path: Path, path: PathKind, sig: signal.Signals
) -> None:
    async with Daemons(tmp_path) as ds, trio.open_nursery() as n:
        p = AgentPath(tmp_path, ds, path=path)
        with trio.fail_after(60):
            await p.start(n)
            pidfile = tmp_path / "exec.pid"
            client = await exec_in_flight(p, pidfile)
            exec_pid = int(pidfile.read_text())
            await wait_until(lambda: len(p.main_numbers()) >= 10, None, interval=0.05)

            p.app.kill(sig)
            await p.app.wait_exit()
            logged = p.main_numbers()  # what the appliance had logged when it died
            with trio.fail_after(10):  # the client's answer, at once
                assert client.stderr is not None
                err = await read_all(client.stderr)
                assert await client.wait() == 1, err
            assert b"the appliance closed before the exit status" in err, err

            await p.app.start()
            with trio.fail_after(15):  # a new session: the main process logs again
                await wait_until(lambda: last(p) > logged[-1], None, interval=0.05)
            await new_exec_works(p)  # the first try
            await wait_until(lambda: not alive(exec_pid), None, interval=0.05)
            streams = p.app.log().count("relayed stream")
            more = last(p) + 20
            await wait_until(lambda: last(p) >= more, None, interval=0.05)
            assert p.app.log().count("relayed stream") == streams <= 3, p.app.log()
            assert p.agent.log().count("the appliance lost the session") == 1, p.agent.log()
            records, exit_info = await p.finish_main()
        n.cancel_scope.cancel()
    check_across_restart(p, logged, records, exit_info, orderly=sig == signal.SIGTERM)


def check_across_restart(
    p: AgentPath,
    logged: list[int],
    records: list[tuple[Stream, bytes]],
    exit_info: Any,
    *,
    orderly: bool,
) -> None:
    """What was logged stays, nothing is logged twice, the later lines are there, then
    the last line and the exit status. The tether sends again what the appliance had
    not acknowledged, so after an orderly stop (which writes out all it acknowledged)
    no line is missing; after a kill only lines it acknowledged and had not written
    yet may be: one hole right where it died, marked as a restart gap."""
    nums = p.main_numbers()
    assert nums[: len(logged)] == logged  # the files kept what was logged
    assert len(set(nums)) == len(nums), "a line logged twice"
    ends = [t for s, t in records if s is Stream.STDOUT and t.startswith(b"main end ")]
    assert ends == [b"main end %d" % nums[-1]]
    assert exit_info is not None and exit_info.status == MAIN_CODE
    hole = sorted(set(range(1, nums[-1] + 1)) - set(nums))
    assert not (orderly and hole), f"lines {hole} missing after an orderly stop"
    assert hole == list(range(logged[-1] + 1, logged[-1] + 1 + len(hole))), hole
    gaps = [e for e in p.events() if e["event"] == "gap"]
    assert not hole or [g.get("reason") for g in gaps] == ["restart"], (hole, gaps)
