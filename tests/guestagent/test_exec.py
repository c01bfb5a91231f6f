"""Exec's process side with real processes and ptys: stdio apart, exit codes and
signals, many at once, tty size and resize, timeout, refusals, no fd leaks."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator

import pytest
import trio

from common.proto import guestinfo as gi
from guestagent.execproc import READ_MAX, ExecProcess, start_exec
from guestagent.execspec import (
    STDERR,
    STDOUT,
    TTY,
    ExecSpec,
    ExecStartError,
    ExitStatus,
    StdinClosed,
    Stream,
    session_spec,
)
from guestagent.reaper import Reaper

T = 20  # safety net only


@pytest.fixture
async def reaper(nursery: trio.Nursery) -> AsyncIterator[Reaper]:
    r = Reaper()
    await nursery.start(r.run)
    yield r


async def read_all(p: ExecProcess, stream: Stream) -> bytes:
    buf = bytearray()
    while chunk := await p.read(stream):
        buf += chunk
    return bytes(buf)


async def read_until(p: ExecProcess, stream: Stream, want: bytes, buf: bytearray) -> bytes:
    """Read into ``buf`` until ``want`` is in it; returns and drops up to its end."""
    while want not in buf:
        chunk = await p.read(stream)
        assert chunk, f"EOF before {want!r}; got {bytes(buf)!r}"
        buf += chunk
    end = buf.index(want) + len(want)
    out = bytes(buf[:end])
    del buf[:end]
    return out


async def run(reaper: Reaper, spec: ExecSpec) -> tuple[bytes, bytes, ExitStatus]:
    with trio.fail_after(T):
        async with await start_exec(spec, reaper=reaper) as p:
            await p.close_stdin()
            out, err = await read_all(p, STDOUT), await read_all(p, STDERR)
            return out, err, await p.wait()


async def test_cat_with_stdin_closed(reaper: Reaper) -> None:
    with trio.fail_after(T):
        p = await start_exec(ExecSpec(["cat"]), reaper=reaper)
        await p.write_stdin(b"hello ")
        await p.write_stdin(b"world\n")
        await p.close_stdin()
        assert await read_all(p, STDOUT) == b"hello world\n"
        assert await p.wait() == ExitStatus(0, None)
        assert p.status == ExitStatus(0, None)
        with pytest.raises(StdinClosed):
            await p.write_stdin(b"late")
        await p.aclose()


async def test_stderr_apart_from_stdout(reaper: Reaper) -> None:
    spec = ExecSpec(["sh", "-c", "echo out; echo err >&2; echo out2; echo err2 >&2"])
    out, err, st = await run(reaper, spec)
    assert (out, err, st) == (b"out\nout2\n", b"err\nerr2\n", ExitStatus(0, None))


async def test_tty_streams_are_not_pipe_streams(reaper: Reaper) -> None:
    async with await start_exec(ExecSpec(["true"]), reaper=reaper) as p:
        assert p.streams == (STDOUT, STDERR)
        with pytest.raises(ValueError, match="TTY is not a stream"):
            await p.read(TTY)
        with pytest.raises(ValueError, match="tty"):
            p.resize(10, 10)
        await p.wait()


async def test_exit_codes_and_death_by_signal(reaper: Reaper) -> None:
    assert (await run(reaper, ExecSpec(["sh", "-c", "exit 3"])))[2] == ExitStatus(3, None)
    st = (await run(reaper, ExecSpec(["sh", "-c", "kill -TERM $$"])))[2]
    assert (st.code, st.signal, st.signal_name, st.shell_code) == (None, 15, "SIGTERM", 143)
    with trio.fail_after(T):
        p = await start_exec(ExecSpec(["sh", "-c", "echo up; exec cat"]), reaper=reaper)
        assert await read_until(p, STDOUT, b"up\n", bytearray()) == b"up\n"
        p.signal(signal.SIGUSR1)
        assert await p.wait() == ExitStatus(None, signal.SIGUSR1)
        p.signal(signal.SIGUSR1)  # gone: no-op, no error
        with pytest.raises(ValueError):
            p.signal(0)
        await p.aclose()


async def test_ten_execs_at_once(reaper: Reaper) -> None:
    results: dict[int, tuple[bytes, ExitStatus]] = {}

    async def one(i: int) -> None:
        spec = ExecSpec(["sh", "-c", 'read x; echo "$x-$N"; exit $N'], env={"N": str(i)})
        async with await start_exec(spec, reaper=reaper) as p:
            await p.write_stdin(f"line{i}\n".encode())
            await p.close_stdin()
            results[i] = (await read_all(p, STDOUT), await p.wait())

    with trio.fail_after(T):
        async with trio.open_nursery() as n:
            for i in range(10):
                n.start_soon(one, i)
    assert results == {i: (f"line{i}-{i}\n".encode(), ExitStatus(i, None)) for i in range(10)}


async def test_reads_are_bounded(reaper: Reaper) -> None:
    spec = ExecSpec(["head", "-c", "300000", "/dev/zero"])
    with trio.fail_after(T):
        async with await start_exec(spec, reaper=reaper) as p:
            total, sizes = 0, []
            while chunk := await p.read(STDOUT, 1000):
                total += len(chunk)
                sizes.append(len(chunk))
            assert total == 300000
            assert max(sizes) <= 1000
            assert (await p.read(STDOUT, 10**9)) == b""  # EOF stays EOF
            assert await p.wait() == ExitStatus(0, None)
        p = await start_exec(ExecSpec(["head", "-c", "3000000", "/dev/zero"]), reaper=reaper)
        async with p:
            sizes = []
            while chunk := await p.read(STDOUT, 10**9):
                sizes.append(len(chunk))
            assert sum(sizes) == 3000000
            assert max(sizes) <= READ_MAX


async def test_tty_sees_initial_size_and_resize(reaper: Reaper) -> None:
    script = (
        'trap "stty size" WINCH; stty size; tty; echo ready;'
        " while :; do read x; case $x in q) exit 7;; esac; done"
    )
    spec = ExecSpec(["sh", "-c", script], tty=True, rows=24, cols=80)
    with trio.fail_after(T):
        async with await start_exec(spec, reaper=reaper) as p:
            assert p.streams == (TTY,)
            buf = bytearray()
            out = await read_until(p, TTY, b"ready\r\n", buf)
            assert out.startswith(b"24 80\r\n/dev/pts/")
            p.resize(40, 120)
            await read_until(p, TTY, b"40 120\r\n", buf)
            p.resize(40, 120)  # same size: no signal
            p.resize(50, 132)
            assert await read_until(p, TTY, b"\r\n", buf) == b"50 132\r\n"
            await p.write_stdin(b"q\n")
            assert await p.wait() == ExitStatus(7, None)
            await read_all(p, TTY)  # the echo of q, then EOF (EIO) as b""


GIVE_UP_CTTY = """
import fcntl, os, signal, termios
def winch(*_):
    os.write(1, b"winch %d\\n" % os.get_terminal_size(1).lines)
    os._exit(0)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.signal(signal.SIGWINCH, winch)
fcntl.ioctl(0, termios.TIOCNOTTY)
os.write(1, b"ready\\n")
while True:
    signal.pause()
"""


async def test_resize_reaches_a_process_without_a_controlling_tty(reaper: Reaper) -> None:
    """No foreground group on the terminal: the kernel sends no SIGWINCH; we do."""
    spec = ExecSpec([sys.executable, "-c", GIVE_UP_CTTY], tty=True, rows=10, cols=10)
    with trio.fail_after(T):
        async with await start_exec(spec, reaper=reaper) as p:
            buf = bytearray()
            await read_until(p, TTY, b"ready\r\n", buf)
            p.resize(31, 10)
            assert await read_until(p, TTY, b"\r\n", buf) == b"winch 31\r\n"
            assert await p.wait() == ExitStatus(0, None)


async def test_tty_close_stdin_sends_eof_and_ctty_is_set(reaper: Reaper) -> None:
    # field 7 of /proc/PID/stat: the controlling tty; 5, 6: process group, session
    script = "cut -d' ' -f5,6,7 /proc/$$/stat; cat; echo done"
    with trio.fail_after(T):
        async with await start_exec(ExecSpec(["sh", "-c", script], tty=True), reaper=reaper) as p:
            buf = bytearray()
            line = (await read_until(p, TTY, b"\r\n", buf)).split()
            assert [int(line[0]), int(line[1])] == [p.pid, p.pid]
            assert int(line[2]) != 0
            await p.write_stdin(b"abc\n")
            await read_until(p, TTY, b"abc\r\n", buf)  # the echo
            await read_until(p, TTY, b"abc\r\n", buf)  # cat's copy
            await p.close_stdin()
            await read_until(p, TTY, b"done\r\n", buf)
            assert await p.wait() == ExitStatus(0, None)
            with pytest.raises(StdinClosed):
                await p.write_stdin(b"x")


async def test_own_session_and_no_leaked_fds(reaper: Reaper) -> None:
    leak = os.open("/dev/null", os.O_RDONLY)  # inheritable on purpose
    os.set_inheritable(leak, True)
    try:
        script = f"cut -d' ' -f5,6 /proc/$$/stat; ls /proc/$$/fd; test -e /proc/$$/fd/{leak}"
        out, _, st = await run(reaper, ExecSpec(["sh", "-c", script]))
    finally:
        os.close(leak)
    lines = out.decode().split()
    assert st == ExitStatus(1, None)  # the fd is not there
    assert lines[0] == lines[1]  # pgid == sid
    assert sorted(int(x) for x in lines[2:]) == [0, 1, 2]


async def test_timeout_kills_the_group(reaper: Reaper) -> None:
    # the background sleep holds stdout: EOF proves the whole group was killed
    spec = ExecSpec(["sh", "-c", "sleep 1000 & echo up; exec sleep 1000"], timeout=0.2)
    with trio.fail_after(T):
        async with await start_exec(spec, reaper=reaper) as p:
            assert await read_until(p, STDOUT, b"up\n", bytearray()) == b"up\n"
            st = await p.wait()
            assert (st.code, st.signal, st.timed_out) == (None, signal.SIGKILL, True)
            assert await read_all(p, STDOUT) == b""
            assert await p.wait() is st  # reported once, the same each time


async def test_exit_before_timeout_is_not_timed_out(reaper: Reaper) -> None:
    _, _, st = await run(reaper, ExecSpec(["true"], timeout=60))
    assert st == ExitStatus(0, None, timed_out=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_env_cwd_and_user(reaper: Reaper) -> None:
    spec = ExecSpec(
        ["sh", "-c", 'echo "$FOO|$PATH|$HOME"; pwd; id -u; id -g'],
        env={"FOO": "bar"},
        cwd="/tmp",
        user="nobody",
    )
    out, err, st = await run(reaper, spec)
    assert st == ExitStatus(0, None), err
    env, cwd, uid, gid = out.decode().splitlines()
    foo, path, home = env.split("|")
    assert (foo, cwd, uid, gid) == ("bar", "/tmp", "65534", "65534")
    assert "/usr/bin" in path and home.startswith("/")
    out, _, _ = await run(reaper, ExecSpec(["sh", "-c", "id -u; id -g; id -G"], user="1234:5678"))
    assert out.decode().split() == ["1234", "5678", "5678"]


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (lambda: ExecSpec(["/no/such/binary"]), "cannot run /no/such/binary: No such file"),
        (lambda: ExecSpec(["no-such-binary-xyz"]), "cannot run no-such-binary-xyz: No such"),
        (lambda: ExecSpec(["/etc/passwd"]), "cannot run /etc/passwd: Permission denied"),
        (lambda: ExecSpec(["true"], cwd="/no/such/dir"), "working directory /no/such/dir: No"),
        (lambda: ExecSpec(["true"], user="no-such-user"), "unknown user 'no-such-user'"),
        (lambda: ExecSpec(["true"], user="root:no-such-grp"), "unknown group 'no-such-grp'"),
        (lambda: ExecSpec([]), "argv must be a non-empty list"),
        (lambda: ExecSpec(["true"], cwd="rel"), "cwd must be an absolute path"),
        (lambda: ExecSpec(["true"], env={"A=B": "x"}), "bad environment name"),
        (lambda: ExecSpec(["tr\x00ue"]), "NUL"),
        (lambda: ExecSpec(["true"], timeout=0), "timeout must be a positive"),
        (lambda: ExecSpec(["true"], tty=True, rows=70000), "rows must be"),
        (lambda: ExecSpec(["true"], user="a:b:c"), "bad user"),
    ],
)
async def test_refused_with_a_reason(reaper: Reaper, spec: object, reason: str) -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(ExecStartError) as ei:
        assert callable(spec)
        await start_exec(spec(), reaper=reaper)
    assert reason in ei.value.reason
    assert sorted(os.listdir("/proc/self/fd")) == before  # nothing left open


async def test_exit_status_has_exactly_one_of_code_and_signal() -> None:
    with pytest.raises(ValueError):
        ExitStatus(0, 9)
    with pytest.raises(ValueError):
        ExitStatus(None, None)


async def test_session_main_process_with_streams_apart(reaper: Reaper) -> None:
    """Attach's process side: a session's Path runs with its own argv[0], env and dir."""
    cfg = gi.SessionConfig(
        id="main",
        path="/bin/sh",
        args=("mysh", "-c", 'echo "$0 $A $(pwd)"; echo err >&2; exit 4'),
        env=("A=1=2",),
        dir="/tmp",
    )
    out, err, st = await run(reaper, session_spec(cfg))
    assert (out, err, st) == (b"mysh 1=2 /tmp\n", b"err\n", ExitStatus(4, None))
    cfg = gi.SessionConfig(id="main", path="no-such-main", tty=True)
    with pytest.raises(ExecStartError, match="cannot run no-such-main"):
        await start_exec(session_spec(cfg, rows=5, cols=6), reaper=reaper)


async def test_kill_and_aclose_end_a_running_exec(reaper: Reaper) -> None:
    with trio.fail_after(T):
        p = await start_exec(ExecSpec(["sh", "-c", "sleep 1000 & exec sleep 1000"]), reaper=reaper)
        p.kill()
        assert await p.wait() == ExitStatus(None, signal.SIGKILL)
        assert await read_all(p, STDOUT) == b""  # the background sleep died too
        await p.aclose()
        p = await start_exec(ExecSpec(["sleep", "1000"], cwd=""), reaper=reaper)
        await p.aclose()
        assert (await p.wait()).signal == signal.SIGKILL
        with pytest.raises(trio.ClosedResourceError):
            await p.read(STDOUT)
