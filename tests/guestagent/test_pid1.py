"""``vic agent`` as PID 1 of a new PID namespace, as in a containerVM: orphans of the
container process are reparented to it and reaped (no zombies), and SIGTERM, which
PID 1 would otherwise ignore, still stops it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from common.proto import guestinfo as gi
from tests.support.waiting import wait_until
from vspc.guestinfo_watch import FileStoreWatcher, configure_session, wait_for_exit

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def _zombies_of(ppid: int) -> list[int]:
    found = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if rest[0] == "Z" and int(rest[1]) == ppid:
            found.append(int(p))
    return found


def _pidns_refused() -> str:
    p = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, check=False)
    return "" if p.returncode == 0 else p.stderr.decode().strip() or f"exit {p.returncode}"


def _nspid(pid: int) -> int:
    """The pid as seen inside its innermost PID namespace."""
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("NSpid:")).split()[-1])


def _start(conf: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
         sys.executable, "-m", "vic.cli", "agent", "--config", str(conf)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(conf.with_suffix(".log"), "wb"),
    )  # fmt: skip


async def test_agent_as_pid1_reaps_orphans(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a PID namespace")
    why = _pidns_refused()
    if why:
        pytest.skip(f"PID namespaces not permitted: {why}")
    fifos = [tmp_path / "f1", tmp_path / "f2"]
    for f in fifos:
        os.mkfifo(f)
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[guestinfo]\nbackend = "file"\npath = "{tmp_path / "vm1.json"}"\n'
        '[console]\ntransport = "none"\n[network]\npublish = false\n'
    )
    w = FileStoreWatcher(tmp_path)
    script = f"cat {fifos[0]} >/dev/null & cat {fifos[1]} >/dev/null & echo $$ > {tmp_path / 'pid'}"
    await configure_session(
        w, "vm1", gi.SessionConfig(id="c1", path="/bin/sh", args=("sh", "-c", script))
    )
    outer = _start(conf)
    try:
        with trio.fail_after(30):
            info = await wait_for_exit(w, "vm1", "c1", 30)
        assert info.status == 0
        (agent_pid,) = _children(outer.pid)  # PID 1 inside, seen from outside
        assert _nspid(agent_pid) == 1
        # the shell is gone; its two background children now belong to PID 1
        assert len(_children(agent_pid)) == 2
        for f in fifos:
            os.close(os.open(f, os.O_WRONLY))  # they exit...
        await wait_until(
            lambda: not (_children(agent_pid) or _zombies_of(agent_pid)),
            10,
            "the orphans exit and PID 1 reaps them",
        )  # (seen in /proc)
        os.kill(agent_pid, signal.SIGTERM)
        outer_rc = await trio.to_thread.run_sync(outer.wait, 10)
        assert outer_rc == 0
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait()
