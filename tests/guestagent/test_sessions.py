"""The tether end to end, in-process: real processes and ptys, file-backed guestinfo,
console over hybrid vsock (the host-side Unix socket ``<uds>_<port>``)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from common.proto import guestinfo as gi
from guestagent.session import SessionRunner
from tests.support.waiting import wait_until, wait_until_async
from vspc.guestinfo_watch import (
    FileStoreWatcher,
    SessionStartFailed,
    VMState,
    configure_session,
    go_ahead,
    send_signal,
    wait_for,
    wait_for_exit,
    wait_for_started,
)

from .agent_helpers import Sink, agent_config, start_agent

T = 20  # safety net only


async def run_one(
    tmp_path: Path, cfg: gi.SessionConfig, sink: Sink | None = None
) -> tuple[gi.ExitInfo, Sink, FileStoreWatcher]:
    w = FileStoreWatcher(tmp_path)
    sink = sink or Sink(str(tmp_path / "con_1024"))
    await configure_session(w, "vm1", cfg)
    with trio.fail_after(T):
        async with trio.open_nursery() as n:
            await n.start(sink.serve)
            await start_agent(n, agent_config(tmp_path))
            info = await wait_for_exit(w, "vm1", cfg.id, T)
            await trio.testing.wait_all_tasks_blocked()  # the sink has read what was sent
            n.cancel_scope.cancel()
    return info, sink, w


async def test_pipes_exit_code_and_output(tmp_path: Path) -> None:
    cfg = gi.SessionConfig(
        id="s1",
        path="/bin/sh",
        args=("sh", "-c", 'echo "out $FOO"; echo err >&2; pwd; exit 5'),
        env=("FOO=bar|baz",),
        dir=str(tmp_path),
    )
    info, sink, w = await run_one(tmp_path, cfg)
    assert info.status == 5 and info.signal is None and info.stoptime
    assert bytes(sink.data) == f"out bar|baz\nerr\n{tmp_path}\n".encode()
    st = await w.state("vm1")
    assert st.session("s1").started == "true"


async def test_tty_session_gets_a_controlling_pty(tmp_path: Path) -> None:
    cfg = gi.SessionConfig(
        id="s1",
        path="/bin/sh",
        args=("sh", "-c", "test -t 0 && test -t 1 && echo isatty; tty >/dev/null && echo ctty"),
        tty=True,
    )
    info, sink, _ = await run_one(tmp_path, cfg)
    assert info.status == 0
    assert bytes(sink.data) == b"isatty\r\nctty\r\n"


@pytest.mark.parametrize("sig,name", [(9, "SIGKILL"), (15, "SIGTERM"), (11, "SIGSEGV")])
async def test_death_by_signal(tmp_path: Path, sig: int, name: str) -> None:
    cfg = gi.SessionConfig(id="s1", path="/bin/sh", args=("sh", "-c", f"echo bye; kill -{sig} $$"))
    info, sink, _ = await run_one(tmp_path, cfg)
    assert info.status == 128 + sig and info.signal == name
    assert bytes(sink.data) == b"bye\n"


async def test_bad_session_configs_report_and_agent_stays_up(tmp_path: Path) -> None:
    w = FileStoreWatcher(tmp_path)
    store = w.store("vm1")
    nocmd = gi.encode_session(gi.SessionConfig(id="nocmd", path="x"))
    nocmd[gi.config_key(gi.session_base("nocmd"), "cmd", "Path")] = gi.NIL
    updates = {gi.sessions_key(): gi.encode_map_keys(["nocmd", "missing", "baddir", "badtty"])}
    updates.update(nocmd)
    updates.update(gi.encode_session(gi.SessionConfig(id="missing", path="/no/such/cmd")))
    updates.update(
        gi.encode_session(gi.SessionConfig(id="baddir", path="/bin/true", dir="/no/such/dir"))
    )
    badtty = gi.encode_session(gi.SessionConfig(id="badtty", path="/bin/true"))
    badtty[gi.config_key(gi.session_base("badtty"), "tty")] = "perhaps"
    updates.update(badtty)
    store.update(updates)
    expected = {
        "nocmd": "no command",
        "missing": "cannot run /no/such/cmd: No such file or directory",
        "baddir": "working directory /no/such/dir",
        "badtty": "not a boolean",
    }
    with trio.fail_after(T):
        async with trio.open_nursery() as n:
            await start_agent(n, agent_config(tmp_path, console="none"))
            for sid, text in expected.items():
                with pytest.raises(SessionStartFailed, match=re.escape(text)):
                    await wait_for_started(w, "vm1", sid, T)
            # still up: a good session added later runs
            await configure_session(w, "vm1", gi.SessionConfig(id="good", path="/bin/true"))
            assert (await wait_for_exit(w, "vm1", "good", T)).status == 0
            n.cancel_scope.cancel()


async def test_go_ahead_holds_launch_until_given(tmp_path: Path) -> None:
    w = FileStoreWatcher(tmp_path)
    sink = Sink(str(tmp_path / "con_1024"))
    marker = tmp_path / "ran"
    cfg = gi.SessionConfig(
        id="s1",
        path="/bin/sh",
        args=("sh", "-c", f"echo first-line; touch {marker}"),
        runblock=True,
    )
    await configure_session(w, "vm1", cfg)
    with trio.fail_after(T):
        async with trio.open_nursery() as n:
            await n.start(sink.serve)
            agent = await start_agent(n, agent_config(tmp_path))
            await agent.console.wait_connected()  # type: ignore[union-attr]
            await trio.testing.wait_all_tasks_blocked()
            st = await w.state("vm1")
            assert st.session("s1").started is None and not marker.exists()
            await go_ahead(w, "vm1", "s1")
            info = await wait_for_exit(w, "vm1", "s1", T)
            await trio.testing.wait_all_tasks_blocked()  # the sink reads what is queued
            n.cancel_scope.cancel()
    assert info.status == 0 and marker.exists()
    assert bytes(sink.data) == b"first-line\n"


async def test_signal_forwarding_and_stdin(tmp_path: Path) -> None:
    w = FileStoreWatcher(tmp_path)
    sink = Sink(str(tmp_path / "con_1024"))
    prog = (
        "import os, signal, sys\n"
        "def h(*a):\n"  # os.write: the main thread may still be inside print()
        "    os.write(1, b'got-term\\n'); os._exit(7)\n"
        "signal.signal(signal.SIGTERM, h)\n"
        "print('echo:' + sys.stdin.readline().strip(), flush=True)\n"
        "signal.pause()\n"
    )
    cfg = gi.SessionConfig(
        id="s1", path=sys.executable, args=("python3", "-c", prog), openstdin=True
    )
    await configure_session(w, "vm1", cfg)
    with trio.fail_after(T):
        async with trio.open_nursery() as n:
            await n.start(sink.serve)
            agent = await start_agent(n, agent_config(tmp_path))
            await wait_for_started(w, "vm1", "s1", T)
            await agent.console.wait_connected()  # type: ignore[union-attr]
            await trio.testing.wait_all_tasks_blocked()
            assert len(sink.streams) == 1
            await sink.streams[0].send_all(b"ping\n")  # appliance -> process stdin
            await sink.wait_for(b"echo:ping\n")
            assert await send_signal(w, "vm1", "s1", "TERM", timeout=T) == 1
            info = await wait_for_exit(w, "vm1", "s1", T)
            await trio.testing.wait_all_tasks_blocked()  # the sink reads what is queued
            n.cancel_scope.cancel()
    assert (info.status, bytes(sink.data)) == (7, b"echo:ping\ngot-term\n")


async def test_100mib_delivered_before_status(tmp_path: Path) -> None:
    size = 100 * 1024 * 1024
    w = FileStoreWatcher(tmp_path)
    sink = Sink(str(tmp_path / "con_1024"), keep=False)
    cfg = gi.SessionConfig(
        id="big", path="/bin/sh", args=("sh", "-c", f"head -c {size} /dev/zero | tr '\\0' x")
    )
    await configure_session(w, "vm1", cfg)
    seen_at_status: list[int] = []

    def status_seen(st: VMState) -> bool | None:
        if st.session("big").exit is None:
            return None
        # at this instant every byte must be with the appliance: read, or queued to it
        seen_at_status.append(sink.total + sink.pending())
        return True

    with trio.fail_after(120):
        async with trio.open_nursery() as n:
            await n.start(sink.serve)
            await start_agent(n, agent_config(tmp_path))
            await wait_for(w, "vm1", status_seen, 120)
            n.cancel_scope.cancel()
    assert seen_at_status == [size]
    exit_info = (await w.state("vm1")).session("big").exit
    assert exit_info is not None and exit_info.status == 0
    assert sink.total == size and sink.sha.hexdigest() == hashlib.sha256(b"x" * size).hexdigest()


async def test_console_reconnects_without_losing_output(tmp_path: Path) -> None:
    n_lines = 100_000
    sink = Sink(str(tmp_path / "con_1024"), max_per_connection=150_000)
    cfg = gi.SessionConfig(
        id="s1",
        path=sys.executable,
        args=(
            "python3",
            "-c",
            f"import sys\nfor i in range({n_lines}): sys.stdout.write('%07d\\n' % i)",
        ),
    )
    info, sink, _ = await run_one(tmp_path, cfg, sink)
    assert info.status == 0
    assert sink.drops == 3 and sink.connections == 4  # it really dropped and came back
    # at-least-once: each connection carried a contiguous piece of the output, and
    # each piece starts no later than where the previous one ended (overlap allowed)
    original = b"".join(b"%07d\n" % i for i in range(n_lines))
    end = 0
    for piece in sink.per_connection:
        if not piece:
            continue
        pos = original.find(bytes(piece), max(0, end - len(piece) - 2 * 1024 * 1024))
        assert 0 <= pos <= end, f"gap: piece starts at {pos}, previous ended at {end}"
        end = max(end, pos + len(piece))
    assert end == len(original)


async def test_output_still_flowing_after_exit_is_not_cut(
    tmp_path: Path, mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The session's process exits while its output is still coming (a child goes on
    writing) and the console is not taking it: the agent keeps carrying it however
    long that takes; drain-grace only applies to output that has gone idle.

    The clock runs at real speed, and jumps well past drain-grace once the output
    is seen stuck on the console: the agent has then certainly made its drain
    decision (on any machine, however slow) before the test looks at it."""
    mock_clock.rate = 1.0
    size = 16 * 1024 * 1024
    w = FileStoreWatcher(tmp_path)
    sink = Sink(str(tmp_path / "con_1024"), keep=False)
    gate = trio.Event()
    cfg = gi.SessionConfig(
        id="s1", path="/bin/sh", args=("sh", "-c", f"head -c {size} /dev/zero & exit 0")
    )
    await configure_session(w, "vm1", cfg)
    acfg = agent_config(tmp_path)
    acfg = dataclasses.replace(
        acfg,
        agent=dataclasses.replace(acfg.agent, drain_grace=0.1),
        console=dataclasses.replace(acfg.console, buffer_bytes=64 * 1024),
    )

    async def slow_appliance(*, task_status: trio.TaskStatus[None]) -> None:
        lst = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await lst.bind(sink.path)
        lst.listen(1)
        task_status.started()
        conn, _ = await lst.accept()
        await gate.wait()  # reads nothing until the process is long gone
        async with trio.SocketStream(conn) as s:
            while sink.total < size:
                sink.total += len(await s.receive_some(1 << 20))

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            await n.start(slow_appliance)
            agent = await start_agent(n, acfg)
            while "s1" not in agent.sessions:
                await trio.testing.wait_all_tasks_blocked()
            runner = agent.sessions["s1"]
            await runner.exited.wait()
            await output_stuck_on_console(runner)
            mock_clock.jump(10 * acfg.agent.drain_grace)  # the drain check's deadline passes
            await trio.testing.wait_all_tasks_blocked()  # ... and the check has run
            assert not [r for r in caplog.records if "not waiting" in r.getMessage()]
            assert runner.console is not None and runner.console.buffered > 0  # nothing cut
            assert (await w.state("vm1")).session("s1").exit is None
            gate.set()
            info = await wait_for_exit(w, "vm1", "s1", 60)
            n.cancel_scope.cancel()
    assert info.status == 0 and sink.total == size


async def output_stuck_on_console(runner: SessionRunner) -> None:
    """Until the session's output pump is parked writing to a full console buffer
    (not reading: that is the state drain-grace must leave alone)."""
    console = runner.console
    assert console is not None

    async def stuck() -> bool:
        await trio.testing.wait_all_tasks_blocked()
        return console.buffered >= console.buffer_limit and not runner._reading

    await wait_until_async(stuck, 20.0, "the session's output blocked on the console")


async def test_grandchild_holding_output_does_not_block_status(tmp_path: Path) -> None:
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    w = FileStoreWatcher(tmp_path)
    cfg = gi.SessionConfig(
        id="s1", path="/bin/sh", args=("sh", "-c", f"cat {fifo} & echo bye; exit 6")
    )
    await configure_session(w, "vm1", cfg)
    acfg = agent_config(tmp_path)
    acfg = dataclasses.replace(acfg, agent=dataclasses.replace(acfg.agent, drain_grace=0.1))
    sink = Sink(str(tmp_path / "con_1024"))
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                await n.start(sink.serve)
                await start_agent(n, acfg)
                info = await wait_for_exit(w, "vm1", "s1", 30)
                await trio.testing.wait_all_tasks_blocked()
                n.cancel_scope.cancel()
        assert info.status == 6 and bytes(sink.data) == b"bye\n"
    finally:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let the grandchild go


async def test_stopping_the_agent_stops_the_container(tmp_path: Path) -> None:
    w = FileStoreWatcher(tmp_path)
    pidfile = tmp_path / "bg.pid"
    cfg = gi.SessionConfig(
        id="s1",
        path="/bin/sh",
        args=("sh", "-c", f"sleep 600 & echo $! > {pidfile}; wait"),
        stopsignal="SIGHUP",
    )
    await configure_session(w, "vm1", cfg)
    with trio.fail_after(T):
        async with trio.open_nursery() as n:
            agent = await start_agent(n, agent_config(tmp_path, console="none"))
            await wait_for_started(w, "vm1", "s1", T)
            child = agent.sessions["s1"].child
            assert child is not None
            await wait_until(
                lambda: pidfile.exists() and pidfile.read_text().strip(),
                T,
                "the shell wrote its background child's pid",
            )
            bg = int(pidfile.read_text())
            n.cancel_scope.cancel()
    # the agent's reaper is gone: collect the shell ourselves; its whole group got SIGHUP
    _, st = await trio.to_thread.run_sync(os.waitpid, child.pid, 0)
    assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGHUP
    # the background sleep, reparented, dies of it too
    await wait_until(lambda: not _alive(bg), T, f"background child {bg} gone")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


async def test_tty_input_and_ctrl_c(tmp_path: Path) -> None:
    """Appliance -> guest bytes reach a tty session through its pty: a line is read
    (and echoed by the line discipline), and ^C interrupts the foreground job."""
    w = FileStoreWatcher(tmp_path)
    sink = Sink(str(tmp_path / "con_1024"))
    script = 'read x; echo "got:$x"; exec cat'  # cat: interrupted by ^C -> 130
    cfg = gi.SessionConfig(id="s1", path="/bin/sh", args=("sh", "-c", script), tty=True)
    await configure_session(w, "vm1", cfg)
    with trio.fail_after(T):
        async with trio.open_nursery() as n:
            await n.start(sink.serve)
            agent = await start_agent(n, agent_config(tmp_path))
            await wait_for_started(w, "vm1", "s1", T)
            await agent.console.wait_connected()  # type: ignore[union-attr]
            await trio.testing.wait_all_tasks_blocked()
            await sink.streams[0].send_all(b"hi\n")
            await sink.wait_for(b"got:hi\r\n")
            await sink.streams[0].send_all(b"\x03")
            info = await wait_for_exit(w, "vm1", "s1", T)
            n.cancel_scope.cancel()
    assert info.status == 130 and info.signal == "SIGINT"
    assert bytes(sink.data).startswith(b"hi\r\ngot:hi\r\n")
