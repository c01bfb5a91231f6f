"""Bulk bursts in worker threads (relay.pump_bulk) under the pump: every byte once,
counters, cancellation, stall, a stream closed under a running thread, a freeze."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from common.io.pipepool import PipePool
from relay import pump_bulk
from relay.pump import PumpCounters, StallTimeout, pump
from relay.pump_freeze import Freeze
from tests.relay.test_pump import PAIRS, exchange, payload, recv_all, tcp_pair, unix_pair
from tests.support.waiting import wait_until


class Spy:
    """Counts the bursts that ran in a thread; ``started`` once one did."""

    def __init__(self) -> None:
        self.bursts = 0
        self.started = trio.Event()


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    """Every bulk burst may use a thread at once (no bytes under trio first)."""
    seen = Spy()
    real = pump_bulk.threaded_burst

    async def counting(*args: object, **kwargs: object) -> tuple[bool, int]:
        seen.bursts += 1
        seen.started.set()
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pump_bulk, "THREAD_AFTER", 0)
    monkeypatch.setattr(pump_bulk, "threaded_burst", counting)
    yield seen
    assert pump_bulk._running == 0  # every thread's burst returned


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_every_byte_once_both_ways_through_threads(kind: str, spy: Spy) -> None:
    x, a = await PAIRS[kind]()
    b, y = await PAIRS[kind]()
    counters = PumpCounters()
    pool = PipePool()
    n = 12 * 1024 * 1024 + 5
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters, pipes=pool))
            dx, dy, got_y, got_x = await exchange(x, y, n)
    assert got_y == dx and got_x == dy
    assert counters.a_to_b == n and counters.b_to_a == n
    assert counters.end_reason == "eof"
    assert spy.bursts >= 2  # both directions
    assert pool.in_use == 0


async def test_no_thread_past_the_cap(spy: Spy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pump_bulk, "MAX_THREADS", 0)
    x, a = await unix_pair()
    b, y = await unix_pair()
    counters = PumpCounters()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters))
            dx, dy, got_y, got_x = await exchange(x, y, 3_000_000)
    assert (got_y, got_x) == (dx, dy)
    assert spy.bursts == 0
    assert counters.a_to_b == 3_000_000


async def _fill(stream: trio.abc.Stream) -> None:
    """Send until the pump closes its end."""
    chunk = payload(1 << 20, 3)
    with pytest.raises(trio.BrokenResourceError):
        while True:
            await stream.send_all(chunk)


async def test_cancel_stops_a_thread_waiting_to_write(spy: Spy) -> None:
    x, a = await tcp_pair()
    b, y = await unix_pair()  # y never reads: the thread waits for the destination
    pool = PipePool()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_fill, x)
            scope = trio.CancelScope()

            async def run() -> None:
                with scope:
                    await pump(a, b, pipes=pool)

            nursery.start_soon(run)
            await spy.started.wait()
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert pool.in_use == 0  # the pipe with bytes in it was thrown away
    assert await y.receive_some(1 << 20)  # what went through before...
    leftover = bytearray()
    await recv_all(y, leftover)  # ...and then EOF: the pump closed its streams


async def test_stall_timeout_in_a_thread(spy: Spy) -> None:
    x, a = await unix_pair()
    b, _y = await unix_pair()  # never read from
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_fill, x)
            with pytest.raises(StallTimeout):
                await pump(a, b, stall_timeout=0.5)
    assert spy.bursts >= 1


async def test_source_closed_under_a_waiting_thread(
    spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pump_bulk, "IDLE_RETURN", 60.0)  # the thread waits for the source
    x, a = await tcp_pair()
    b, y = await tcp_pair()
    counters = PumpCounters()
    data = payload(2_000_000, 4)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters))
            await x.send_all(data)
            got = bytearray()
            while len(got) < len(data):
                got += await y.receive_some(1 << 16)
            assert spy.bursts == 1 and pump_bulk._running == 1
            await a.aclose()  # the daemon shutting one stream down under the pump
    assert bytes(got) == data
    assert counters.end_reason.startswith("reset")
    assert counters.a_to_b == len(data)
    assert await y.receive_some(10) == b""


async def test_thread_never_touches_a_reused_fd_number(
    spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream closed under a waiting thread frees its fd number; the next socket
    that gets it belongs to someone else, and its bytes must stay theirs."""
    monkeypatch.setattr(pump_bulk, "IDLE_RETURN", 60.0)  # the thread waits for the source
    x, a = await tcp_pair()
    b, y = await tcp_pair()
    data = payload(2_000_000, 5)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=PumpCounters()))
            await x.send_all(data)
            got = bytearray()
            while len(got) < len(data):
                got += await y.receive_some(1 << 16)
            assert pump_bulk._running == 1
            old = a.socket.fileno()
            await a.aclose()
            mine, theirs = socket.socketpair()  # the lowest free number: ``old``
            stranger = mine if mine.fileno() == old else theirs
            assert stranger.fileno() == old
            peer = theirs if stranger is mine else mine
            peer.sendall(b"stranger's bytes")
        rest = bytearray()
        while chunk := await y.receive_some(1 << 16):
            rest += chunk
    assert bytes(got) == data and rest == b""
    assert stranger.recv(100) == b"stranger's bytes"  # still there, unread
    stranger.close()
    peer.close()


async def test_freeze_after_bulk_holds_nothing_in_a_pipe(spy: Spy) -> None:
    x, a = await unix_pair()
    b, y = await unix_pair()
    pool = PipePool()
    freeze = Freeze()
    counters = PumpCounters()
    first, second = payload(3_000_000, 5), payload(100_000, 6)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters, pipes=pool, freeze=freeze))
            got = bytearray()
            async with trio.open_nursery() as io:
                io.start_soon(x.send_all, first)
                while len(got) < len(first):
                    got += await y.receive_some(1 << 16)
            assert spy.bursts >= 1
            freeze.ask()

            def stopped() -> bool:
                freeze.poke()
                return freeze.frozen

            await wait_until(stopped, what="the pump stops at a safe point")
            assert pool.in_use == 0  # the thread returned with its pipe empty
            assert counters.a_to_b == len(first)
            freeze.decide(False)  # not moved: it runs on
            await x.send_all(second)
            while len(got) < len(first) + len(second):
                got += await y.receive_some(1 << 16)
            await x.send_eof()
            await y.send_eof()
    assert bytes(got) == first + second
    assert counters.end_reason == "eof"


async def test_freeze_recalls_a_thread_waiting_for_its_source(
    spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pump_bulk, "IDLE_RETURN", 60.0)  # would wait that long unasked
    x, a = await unix_pair()
    b, y = await unix_pair()
    pool = PipePool()
    freeze = Freeze()
    data = payload(3_000_000, 7)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, pipes=pool, freeze=freeze))
            got = bytearray()
            async with trio.open_nursery() as io:
                io.start_soon(x.send_all, data)
                while len(got) < len(data):
                    got += await y.receive_some(1 << 16)
            assert pump_bulk._running == 1  # the thread waits for its source
            freeze.ask()

            def stopped() -> bool:
                freeze.poke()
                return freeze.frozen

            await wait_until(stopped, timeout=10, what="the thread returns to its read wait")
            assert pump_bulk._running == 0 and pool.in_use == 0
            # its source is as trio left it (relay.pump_blocking), ready to move
            assert not os.get_blocking(a.socket.fileno())
            freeze.decide(False)
            await x.send_eof()
            await y.send_eof()
    assert bytes(got) == data


async def test_thread_reports_reach_counters_in_the_trio_thread(
    spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pump_bulk, "REPORT_AFTER", 0.0)  # report after every write
    trio_thread = threading.get_ident()
    calls: list[tuple[int, int]] = []
    counters = PumpCounters(on_bytes=lambda _d, n: calls.append((threading.get_ident(), n)))
    x, a = await tcp_pair()
    b, y = await tcp_pair()
    n = 6_000_000
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters, idle_timeout=30.0))
            dx, dy, got_y, got_x = await exchange(x, y, n)
    assert (got_y, got_x) == (dx, dy)
    assert spy.bursts >= 2
    assert counters.a_to_b == n and counters.b_to_a == n
    assert sum(k for _t, k in calls) == 2 * n
    assert {t for t, _k in calls} == {trio_thread}
    assert len(calls) > 2 * spy.bursts  # reported while the threads ran, not only at the end
