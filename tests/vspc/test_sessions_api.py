"""The appliance's session API against a real tether end (real processes) over a
socketpair: exec, attach, logs and status (issue 13)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from tests.vspc.sessions_util import VM, rig
from vspc.sessions.api import ExecRefused, NoSession
from vspc.sessions.channel import MainState

pytestmark = pytest.mark.trio


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    async def __call__(self, data: bytes) -> None:
        self.data += data


async def test_exec_cat_stdin_stdout_and_exit_code(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.connect()
        out, err = Collect(), Collect()

        async def stdin() -> AsyncIterator[bytes]:
            for part in (b"hello ", b"world\n"):
                yield part

        with trio.fail_after(20):
            st = await r.api.exec(VM, ["cat"], stdin=stdin(), stdout=out, stderr=err)
        assert (st.code, st.signal) == (0, None)
        assert bytes(out.data) == b"hello world\n"
        assert bytes(err.data) == b""


async def test_exec_stderr_apart_and_code(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.connect()
        out, err = Collect(), Collect()
        script = "echo out; echo err >&2; exit 7"
        with trio.fail_after(20):
            st = await r.api.exec(VM, ["sh", "-c", script], stdout=out, stderr=err)
        assert st.code == 7
        assert bytes(out.data) == b"out\n"
        assert bytes(err.data) == b"err\n"


async def test_exec_signal_and_refused(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.connect()
        with trio.fail_after(20):
            st = await r.api.exec(VM, ["sh", "-c", "kill -TERM $$"])
            assert (st.code, st.signal) == (None, signal.SIGTERM)
            with pytest.raises(ExecRefused):
                await r.api.exec(VM, ["/nonexistent/program"])
        with pytest.raises(NoSession):
            await r.api.exec("other-vm", ["true"])


async def test_exec_timeout_kills(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.connect()
        with trio.fail_after(20):
            st = await r.api.exec(VM, ["sleep", "30"], timeout=0.3)
        assert st.signal == signal.SIGKILL and st.timed_out


async def test_ten_execs_at_once(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.connect()
        results: dict[int, tuple[int | None, bytes]] = {}

        async def one(i: int) -> None:
            out = Collect()
            st = await r.api.exec(VM, ["sh", "-c", f"echo {i}; exit {i}"], stdout=out)
            results[i] = (st.code, bytes(out.data))

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                for i in range(10):
                    n.start_soon(one, i)
        assert results == {i: (i, f"{i}\n".encode()) for i in range(10)}


async def test_tty_exec_sees_resize(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.connect()
        out = Collect()
        send, receive = trio.open_memory_channel[tuple[int, int]](4)
        sizes_send, sizes = trio.open_memory_channel[bytes](4)
        # the shell waits for a line, then prints what stty sees
        script = "read x; stty size"

        async def drive() -> None:
            await send.send((33, 101))
            await r.tether.resize_seen.wait()  # the pty has the size: now the line
            await sizes_send.send(b"go\n")
            await sizes_send.aclose()

        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(drive)
                st = await r.api.exec(
                    VM,
                    ["sh", "-c", script],
                    tty=True,
                    size=(10, 20),
                    stdin=sizes,
                    stdout=out,
                    resize=receive,
                )
        assert st.code == 0
        assert b"33 101" in bytes(out.data)


async def test_main_process_logs_status_and_attach(tmp_path: Path) -> None:
    main = ["sh", "-c", "echo one; echo two >&2; read x; echo got $x; exit 3"]
    async with rig(tmp_path, main=main) as r:
        assert r.api.status(VM).main is MainState.UNKNOWN
        assert not r.api.status(VM).connected
        await r.connect()
        out = Collect()
        session = r.service.find(VM)
        assert session is not None
        with trio.fail_after(20):
            await session.wait_main(MainState.RUNNING)
            async with aclosing(r.api.logs(VM, follow=True)) as chunks:
                seen = b""
                async for chunk in chunks:
                    seen += chunk
                    if seen.count(b"\n") == 2:
                        break
            assert sorted(seen.splitlines()) == [b"one", b"two"]
            assert r.api.status(VM).connected
            assert r.api.status(VM).main is MainState.RUNNING

            async def line() -> AsyncIterator[bytes]:
                yield b"x1\n"

            st = await r.api.attach(VM, stdin=line(), stdout=out)
        assert st is not None and st.code == 3
        assert bytes(out.data) == b"got x1\n"
        status = r.api.status(VM)
        assert status.main is MainState.EXITED and status.exit == st
        logs = b"".join([c async for c in r.api.logs(VM, tail=1)])
        assert logs == b"got x1\n"
        stamped = b"".join([c async for c in r.api.logs(VM, tail=2, timestamps=True)])
        assert stamped.count(b"Z ") == 2
        assert await r.api.attach(VM) == st  # ended: its status at once


async def test_a_stalled_exec_client_holds_bounded_and_stalls_nothing_else(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        await r.connect()
        go = trio.Event()
        got = Collect()

        async def stalled(data: bytes) -> None:
            await go.wait()
            got.data += data

        status = []

        async def big() -> None:
            status.append(
                await r.api.exec(VM, ["head", "-c", "8000000", "/dev/zero"], stdout=stalled)
            )

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                n.start_soon(big)
                await trio.testing.wait_all_tasks_blocked()
                out = Collect()
                st = await r.api.exec(VM, ["echo", "hi"], stdout=out)  # not held up
                assert (st.code, bytes(out.data)) == (0, b"hi\n")
                session = r.service.find(VM)
                assert session is not None
                held = sum(q.held for q in session.queues.values())
                assert held <= r.service.config.replay_limit + 64 * 1024
                go.set()
        assert status[0].code == 0 and len(got.data) == 8_000_000


async def test_cancelling_an_exec_ends_the_process(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.connect()
        up = trio.Event()

        async def out(data: bytes) -> None:
            up.set()

        with trio.fail_after(20):
            async with trio.open_nursery() as n:

                async def run() -> None:
                    await r.api.exec(VM, ["sh", "-c", "echo up; exec sleep 1000"], stdout=out)

                n.start_soon(run)
                await up.wait()
                n.cancel_scope.cancel()  # the client went away
            (proc,) = r.tether.procs.values()
            status = await proc.wait()  # CLOSE reached the tether, which killed it
        assert status.signal == signal.SIGKILL
