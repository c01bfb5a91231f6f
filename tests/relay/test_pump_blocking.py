"""Blocking reads in a bulk thread (relay.pump_blocking): the source socket is blocking
only while the pump's other direction waits to read, never while it writes, and is
given back to trio as it was (O_NONBLOCK, no receive timeout) when the thread returns."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from common.io.pipepool import PipePool
from relay import pump_bulk
from relay.pump import PumpCounters, pump
from relay.pump_blocking import BlockingSource
from tests.relay.test_pump import PAIRS, payload, recv_n, unix_pair
from tests.support.waiting import wait_until


@pytest.fixture
def threads_at_once(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Bulk bursts use a thread at once, and a thread waits for its source (no return
    to trio after IDLE_RETURN)."""
    monkeypatch.setattr(pump_bulk, "THREAD_AFTER", 0)
    monkeypatch.setattr(pump_bulk, "IDLE_RETURN", 60.0)
    yield
    assert pump_bulk._running == 0  # every thread's burst returned


def rcvtimeo(fd: int) -> tuple[int, int]:
    with socket.socket(fileno=os.dup(fd)) as s:
        return struct.unpack("ll", s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))


def test_blocking_only_while_the_writer_waits() -> None:
    mine, peer = socket.socketpair()
    mine.setblocking(False)
    fd = os.dup(mine.fileno())  # the thread's duplicate: the same open file
    src = BlockingSource()
    src.attach(fd, 0.05)
    assert rcvtimeo(fd)[0] == 0 and 40_000 <= rcvtimeo(fd)[1] <= 60_000  # (in ticks)
    assert not src.try_block()  # the other direction may write: stays non-blocking
    assert not os.get_blocking(mine.fileno())
    src.waiting()
    assert src.try_block() and os.get_blocking(mine.fileno())
    src.woke()  # before it writes anything
    assert not src.blocked and not os.get_blocking(mine.fileno())
    src.waiting()
    assert src.try_block()
    src.detach()
    assert not os.get_blocking(mine.fileno()) and rcvtimeo(mine.fileno()) == (0, 0)
    assert not src.try_block()  # detached: nothing to block
    os.close(fd)
    mine.close()
    peer.close()


async def _first_bulk(x: trio.SocketStream, y: trio.SocketStream, n: int, seed: int) -> bytes:
    """x sends n bytes through the pump to y; once y has them, the thread waits for x."""
    data = payload(n, seed)
    got = bytearray()
    async with trio.open_nursery() as io:
        io.start_soon(x.send_all, data)
        await recv_n(y, got, n)
    assert bytes(got) == data
    return data


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_the_other_direction_never_writes_to_a_blocking_socket(
    kind: str, threads_at_once: None
) -> None:
    x, a = await PAIRS[kind]()
    b, y = await PAIRS[kind]()
    a_fd = a.socket.fileno()
    back = payload(16 << 20, 9)  # more than a's send and x's receive buffers hold
    # A trio thread stuck in a blocking write to ``a`` would never get here again:
    # a watchdog then frees it by reading x (and the test fails), instead of hanging.
    answered, stuck = threading.Event(), threading.Event()
    x_fd = os.dup(x.socket.fileno())

    def watchdog() -> None:
        if not answered.wait(20):
            stuck.set()
            os.set_blocking(x_fd, True)
            while os.read(x_fd, 1 << 20) and not answered.is_set():
                pass

    counters = PumpCounters()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters))
            first = await _first_bulk(x, y, 3_000_000, 8)
            await wait_until(lambda: os.get_blocking(a_fd), what="x read in blocking mode")
            guard = threading.Thread(target=watchdog, daemon=True)
            guard.start()
            nursery.start_soon(y.send_all, back)  # x reads none of it yet
            await trio.testing.wait_all_tasks_blocked()  # the other direction waits in trio
            answered.set()
            assert not os.get_blocking(a_fd)  # it turned blocking off before it wrote
            got = bytearray()
            await recv_n(x, got, len(back))
            await x.send_eof()
            await y.send_eof()
    guard.join(5)
    os.close(x_fd)
    assert not stuck.is_set(), "the trio thread blocked in a write"
    assert bytes(got) == back
    assert counters.a_to_b == len(first) and counters.b_to_a == len(back)
    assert counters.end_reason == "eof"


async def test_cancel_a_thread_in_a_blocking_read(threads_at_once: None) -> None:
    x, a = await unix_pair()
    b, y = await unix_pair()
    pool = PipePool()
    a_file = os.dup(a.socket.fileno())  # (the pump closes ``a``: its open file stays)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def run() -> None:
                with scope:
                    await pump(a, b, pipes=pool)

            nursery.start_soon(run)
            await _first_bulk(x, y, 3_000_000, 10)
            await wait_until(lambda: os.get_blocking(a_file), what="x read in blocking mode")
            scope.cancel()  # the read ends within CHECK_EVERY; the thread stops
    assert pool.in_use == 0
    assert not os.get_blocking(a_file) and rcvtimeo(a_file) == (0, 0)  # as trio left it
    os.close(a_file)
