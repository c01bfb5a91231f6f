"""The pump over real kernel endpoints: TCP, Unix socketpairs, FIFOs, ptys, TLS, socat."""

from __future__ import annotations

import functools
import os
import random
import shutil
import socket
import ssl
import struct
import tty
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from common.io.fastsock import NOTSENT_LOWAT
from common.io.pipepool import PipePool
from relay.pump import IdleTimeout, PumpCounters, StallTimeout, pump
from tests.support.waiting import wait_until

Pair = tuple[trio.abc.Stream, trio.abc.Stream]


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


async def unix_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    s1, s2 = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return trio.SocketStream(s1), trio.SocketStream(s2)


PAIRS: dict[str, Callable[[], Awaitable[tuple[trio.SocketStream, trio.SocketStream]]]] = {
    "tcp": tcp_pair,
    "unix": unix_pair,
}


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


async def send_then_eof(stream: trio.abc.Stream, data: bytes, chunk: int = 100_003) -> None:
    for i in range(0, len(data), chunk):
        await stream.send_all(data[i : i + chunk])
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()


async def recv_all(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while True:
        try:
            chunk = await stream.receive_some(1 << 16)
        except trio.BrokenResourceError:  # pty slave after hangup (EIO)
            return
        if not chunk:
            return
        into += chunk


async def recv_n(stream: trio.abc.ReceiveStream, into: bytearray, n: int) -> None:
    while len(into) < n:
        chunk = await stream.receive_some(1 << 16)
        assert chunk, "unexpected EOF"
        into += chunk


async def exchange(
    x: trio.abc.Stream, y: trio.abc.Stream, n: int
) -> tuple[bytes, bytes, bytes, bytes]:
    """x and y each send n random bytes then EOF, reading concurrently."""
    dx, dy = payload(n, 1), payload(n, 2)
    at_x, at_y = bytearray(), bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_then_eof, x, dx)
        nursery.start_soon(send_then_eof, y, dy)
        nursery.start_soon(recv_all, x, at_x)
        nursery.start_soon(recv_all, y, at_y)
    return dx, dy, bytes(at_y), bytes(at_x)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("use_splice", [True, False], ids=["splice", "copy"])
async def test_big_transfer_both_ways(kind: str, use_splice: bool) -> None:
    x, a = await PAIRS[kind]()
    b, y = await PAIRS[kind]()
    counters = PumpCounters()
    pool = PipePool()
    n = 6 * 1024 * 1024 + 17
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters, pipes=pool, splice=use_splice))
            dx, dy, got_y, got_x = await exchange(x, y, n)
    assert got_y == dx
    assert got_x == dy
    assert counters.a_to_b == n and counters.b_to_a == n
    assert counters.spliced is use_splice
    assert counters.end_reason == "eof"
    assert pool.in_use == 0
    # bulk data went through pipes (one per direction at most) only on the splice path
    assert (1 if use_splice else 0) <= pool.created <= (2 if use_splice else 0)


async def test_memory_streams_use_copy_path() -> None:
    x, a = trio.testing.memory_stream_pair()
    b, y = trio.testing.memory_stream_pair()
    counters = PumpCounters()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters))
            dx, dy, got_y, got_x = await exchange(x, y, 300_000)
    assert (got_y, got_x) == (dx, dy)
    assert not counters.spliced


async def test_mixed_socket_and_memory_copy_path() -> None:
    x, a = await tcp_pair()
    b, y = trio.testing.memory_stream_pair()
    counters = PumpCounters()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters))
            dx, dy, got_y, got_x = await exchange(x, y, 2_000_000)
    assert (got_y, got_x) == (dx, dy)
    assert not counters.spliced


class _KeepingStream(trio.abc.HalfCloseableStream):
    """Keeps every object it is sent, as a peer link's replay buffer does (no copy)."""

    def __init__(self) -> None:
        self.kept: list[bytes | bytearray | memoryview] = []
        self.eof = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.kept.append(data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self.eof = True

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_destination_that_keeps_what_it_is_sent_gets_buffers_of_its_own() -> None:
    # A socket source into a destination that keeps references (a peer link's
    # replay buffer): every read must land in an object nobody writes to again.
    x, a = await unix_pair()
    b = _KeepingStream()
    data = payload(3_000_000, 7)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b))
            await send_then_eof(x, data)
    assert b.eof
    assert len(b.kept) > 1
    assert b"".join(bytes(k) for k in b.kept) == data


@pytest.mark.parametrize("first", ["x", "y"])
async def test_half_close_each_way(first: str) -> None:
    """One side finishes early; the other keeps sending after seeing EOF."""
    x, a = await tcp_pair()
    b, y = await unix_pair()
    early, late = (x, y) if first == "x" else (y, x)
    counters = PumpCounters()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters))
            await early.send_all(b"request")
            await early.send_eof()
            got = bytearray()
            await recv_all(late, got)  # sees the data, then EOF (half-close propagated)
            assert bytes(got) == b"request"
            reply = payload(500_000, 3)
            back = bytearray()
            async with trio.open_nursery() as io:
                io.start_soon(recv_all, early, back)
                await late.send_all(reply)  # the other direction still works
                await late.send_eof()
            assert bytes(back) == reply
    assert counters.spliced  # the fd fast path, small request included


async def test_fifos_and_tcp(tmp_path: Path) -> None:
    """a is a FIFO pair (StapledStream of FdStreams); b is TCP. Splice both ways."""
    fin, fout = tmp_path / "in", tmp_path / "out"
    os.mkfifo(fin)
    os.mkfifo(fout)
    pump_r = os.open(fin, os.O_RDONLY | os.O_NONBLOCK)
    ext_w = os.open(fin, os.O_WRONLY | os.O_NONBLOCK)
    ext_r = os.open(fout, os.O_RDONLY | os.O_NONBLOCK)
    pump_w = os.open(fout, os.O_WRONLY | os.O_NONBLOCK)
    a = trio.StapledStream(trio.lowlevel.FdStream(pump_w), trio.lowlevel.FdStream(pump_r))
    x = trio.StapledStream(trio.lowlevel.FdStream(ext_w), trio.lowlevel.FdStream(ext_r))
    b, y = await tcp_pair()
    counters = PumpCounters()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters))
            dx, dy, got_y, got_x = await exchange(x, y, 3_000_000)
    await x.aclose()
    assert (got_y, got_x) == (dx, dy)
    assert counters.spliced


async def test_pty_master_and_unix() -> None:
    """a is a pty master (FdStream); the test drives the raw-mode slave."""
    master, slave = os.openpty()
    tty.setraw(slave)
    a = trio.lowlevel.FdStream(master)
    s = trio.lowlevel.FdStream(slave)
    b, y = await unix_pair()
    counters = PumpCounters()
    n = 200_000
    dx, dy = payload(n, 4), payload(n, 5)
    at_s, at_y = bytearray(), bytearray()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters))
            async with trio.open_nursery() as io:
                io.start_soon(recv_n, y, at_y, n)
                io.start_soon(recv_n, s, at_s, n)
                io.start_soon(send_then_eof, y, dy)
                await s.send_all(dx)
            # Every byte both ways arrived; the slave hanging up is the master's EOF.
            await s.aclose()
            assert await y.receive_some(10) == b""
    assert bytes(at_y) == dx
    assert bytes(at_s) == dy
    assert counters.a_to_b == n and counters.b_to_a == n
    assert counters.spliced


async def test_tls_side_uses_copy_path() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("relay.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    raw_x, raw_a = await tcp_pair()
    x = trio.SSLStream(raw_x, client_ctx, server_hostname="relay.test")
    a = trio.SSLStream(raw_a, server_ctx, server_side=True)
    b, y = await tcp_pair()
    counters = PumpCounters()
    n = 1_000_000
    dx, dy = payload(n, 6), payload(n, 7)
    at_x, at_y = bytearray(), bytearray()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters))
            async with trio.open_nursery() as io:
                io.start_soon(recv_n, y, at_y, n)
                io.start_soon(recv_n, x, at_x, n)
                io.start_soon(send_then_eof, y, dy)
                await x.send_all(dx)
            # SSLStream cannot half-close: the pump keeps a open until x closes too.
            await x.aclose()
            assert await y.receive_some(10) == b""  # x's close ends a->b: EOF at y
    assert bytes(at_y) == dx and bytes(at_x) == dy
    assert not counters.spliced


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")
async def test_socat_echo_peer(tmp_path: Path) -> None:
    """socat (an independent implementation) echoes back through the pump."""
    path = str(tmp_path / "echo.sock")
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen(1)
    x, a = await tcp_pair()
    counters = PumpCounters()
    n = 4_000_000
    data = payload(n, 8)
    got = bytearray()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            proc = await nursery.start(
                functools.partial(trio.run_process, check=False),
                ["socat", "-b", "65536", f"UNIX-CONNECT:{path}", "EXEC:cat"],
            )
            sock, _ = await listener.accept()
            b = trio.SocketStream(sock)
            nursery.start_soon(lambda: pump(a, b, counters=counters))
            nursery.start_soon(send_then_eof, x, data)
            await recv_all(x, got)
            await proc.wait()
    listener.close()
    assert bytes(got) == data
    assert counters.spliced
    assert counters.a_to_b == n and counters.b_to_a == n


async def test_counters_live_and_pipe_returned_when_idle() -> None:
    x, a = await tcp_pair()
    b, y = await unix_pair()
    seen: list[tuple[str, int]] = []
    counters = PumpCounters(on_bytes=lambda d, n: seen.append((d, n)))
    pool = PipePool(size=256 * 1024)
    data = payload(3_000_000, 9)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters, pipes=pool))
            got = bytearray()

            async def read_n() -> None:
                while len(got) < len(data):
                    got.extend(await y.receive_some(1 << 16))

            async with trio.open_nursery() as io:
                io.start_soon(read_n)
                await x.send_all(data)
            # Stream still open, nothing moving: counters already show the bytes,
            # and the direction gave its pipe back.
            await trio.testing.wait_all_tasks_blocked()
            assert bytes(got) == data
            assert counters.a_to_b == len(data)
            assert sum(n for d, n in seen if d == "a_to_b") == len(data)
            assert pool.in_use == 0
            assert pool.idle >= 1
            assert pool.created <= 2
            # trio's 16 KiB TCP_NOTSENT_LOWAT is lifted on the TCP side the pump writes
            lowat = a.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
            assert lowat == NOTSENT_LOWAT
            # The pooled pipe is reused for the next burst.
            await y.send_all(b"pong")
            assert await x.receive_some(10) == b"pong"
            await trio.testing.wait_all_tasks_blocked()
            assert pool.in_use == 0 and pool.created <= 2
            await x.aclose()
            await y.aclose()
    assert counters.end_reason in ("eof",) or counters.end_reason.startswith("reset")


async def test_idle_timeout(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    x, a = await tcp_pair()
    b, y = await unix_pair()
    counters = PumpCounters()
    t0 = trio.current_time()
    result: list[BaseException] = []

    async def run() -> None:
        try:
            await pump(a, b, counters=counters, idle_timeout=30)
        except IdleTimeout as exc:
            result.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        for _ in range(4):  # traffic every 20 s keeps it alive
            await trio.sleep(20)
            await x.send_all(b"tick")
            assert await y.receive_some(10) == b"tick"
    assert result and isinstance(result[0], IdleTimeout)
    elapsed = trio.current_time() - t0
    # fires idle_timeout after the last byte
    assert 80 + 30 <= elapsed < 80 + 30 + 0.1
    assert counters.end_reason == "idle timeout"
    # both sides were closed by the pump
    assert await x.receive_some(10) == b""
    assert await y.receive_some(10) == b""


@pytest.mark.parametrize("use_splice", [True, False], ids=["splice", "copy"])
async def test_stall_timeout(mock_clock: trio.testing.MockClock, use_splice: bool) -> None:
    mock_clock.autojump_threshold = 0
    x, a = await tcp_pair()
    b, _y = await unix_pair()  # _y never reads (kept referenced: open)
    raised: list[BaseException] = []

    async def run() -> None:
        try:
            await pump(a, b, stall_timeout=5, splice=use_splice)
        except StallTimeout as exc:
            raised.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)

        async def flood() -> None:
            chunk = b"z" * 65536
            try:
                while True:
                    await x.send_all(chunk)
            except trio.BrokenResourceError:
                pass

        nursery.start_soon(flood)
        await wait_until(lambda: raised, 60, "the stall timeout", interval=1)
        nursery.cancel_scope.cancel()
    assert isinstance(raised[0], StallTimeout)
    assert "stalled" in str(raised[0])


async def test_reset_peer_ends_quietly() -> None:
    x, a = await tcp_pair()
    b, y = await tcp_pair()
    counters = PumpCounters()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters))
            await x.send_all(b"hello")
            assert await y.receive_some(10) == b"hello"
            y.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await y.aclose()  # RST
            rest = bytearray()
            try:
                await recv_all(x, rest)
            except trio.BrokenResourceError:
                pass
    assert counters.end_reason.startswith("reset")


@pytest.mark.parametrize("use_splice", [True, False], ids=["splice", "copy"])
async def test_bytes_in_flight_at_eof_are_flushed(use_splice: bool) -> None:
    """The source ends while the destination is not reading: nothing is lost."""
    x, a = await unix_pair()
    b, y = await tcp_pair()
    data = payload(3_000_000, 10)
    counters = PumpCounters()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters, splice=use_splice))
            sender_done = trio.Event()

            async def send() -> None:
                await send_then_eof(x, data)
                sender_done.set()

            nursery.start_soon(send)
            # y reads nothing until everything is stuck in buffers (and the pipe).
            await trio.testing.wait_all_tasks_blocked()
            got = bytearray()
            await recv_all(y, got)
            assert sender_done.is_set()
            assert bytes(got) == data
            await y.send_eof()
            assert await x.receive_some(10) == b""


async def test_cancelled_pump_closes_both_streams() -> None:
    x, a = await tcp_pair()
    b, y = await unix_pair()
    pool = PipePool()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def run() -> None:
                with scope:
                    await pump(a, b, pipes=pool)

            nursery.start_soon(run)
            await x.send_all(b"data")
            assert await y.receive_some(10) == b"data"
            scope.cancel()  # e.g. a drain deadline
    assert await x.receive_some(10) == b""
    assert await y.receive_some(10) == b""
    assert pool.in_use == 0


async def test_stream_closed_by_another_task_ends_pump() -> None:
    x, a = await tcp_pair()
    b, y = await tcp_pair()
    counters = PumpCounters()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters))
            await x.send_all(b"data")
            assert await y.receive_some(10) == b"data"
            await trio.testing.wait_all_tasks_blocked()
            await a.aclose()  # the daemon shutting one stream down under the pump
    assert counters.end_reason.startswith("reset")
    assert await y.receive_some(10) == b""
