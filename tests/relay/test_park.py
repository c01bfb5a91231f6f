"""Idle parking of pumps (relay.park): an idle fast-path pump keeps one task and
no nursery; traffic, EOF, timeouts, cancellation and a close under it all still work."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.config import TcpListener, TimeoutsConfig
from relay.park import PARK_AFTER, current_parker
from relay.pump import IdleTimeout, PumpCounters, pump
from tests.relay.relayfix import (
    Appliance,
    pattern,
    relay_config,
    roundtrip,
    start_relay,
    tcp_egress,
)
from tests.relay.test_pump import payload, recv_all, recv_n, send_then_eof, tcp_pair, unix_pair

IDLE = 3 * PARK_AFTER  # long enough for a sweep to see a whole idle interval


def child_tasks_of_pump(root: trio.lowlevel.Task) -> int:
    n = 0
    stack = [root]
    while stack:
        t = stack.pop()
        for nursery in t.child_nurseries:
            for c in nursery.child_tasks:
                n += 1
                stack.append(c)
    return n


async def test_idle_pump_parks_then_relays_both_ways(
    autojump_clock: trio.testing.MockClock,
) -> None:
    x, a = await tcp_pair()
    b, y = await unix_pair()
    counters = PumpCounters()
    parker = current_parker()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: pump(a, b, counters=counters))
        for round_ in range(3):
            await x.send_all(b"ping %d" % round_)
            assert await y.receive_some(100) == b"ping %d" % round_
            await y.send_all(b"pong")
            assert await x.receive_some(100) == b"pong"
            assert parker.parked == 0
            await trio.sleep(IDLE)
            assert parker.parked == 1
            # parked: the pump runs in its own task only (no direction task)
            assert child_tasks_of_pump(next(iter(nursery.child_tasks))) == 0
        # bulk after parking, both ways at once, byte-exact
        up, down = payload(2_000_000, 1), payload(1_500_000, 2)
        got_up, got_down = bytearray(), bytearray()
        async with trio.open_nursery() as n2:
            n2.start_soon(x.send_all, up)
            n2.start_soon(y.send_all, down)
            n2.start_soon(recv_n, y, got_up, len(up))
            n2.start_soon(recv_n, x, got_down, len(down))
        assert bytes(got_up) == up and bytes(got_down) == down
        assert parker.parked == 0
        await trio.sleep(IDLE)
        assert parker.parked == 1
        await x.send_eof()
        assert await y.receive_some(10) == b""
        await y.aclose()
    assert counters.end_reason == "eof"
    assert counters.a_to_b == 3 * 6 + len(up)
    assert counters.spliced
    assert parker.parked == 0


async def test_half_closed_pump_parks_on_one_fd(autojump_clock: trio.testing.MockClock) -> None:
    x, a = await unix_pair()
    b, y = await tcp_pair()
    parker = current_parker()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, a, b)
        await send_then_eof(x, b"last words")
        got = bytearray()
        await recv_all(y, got)
        assert bytes(got) == b"last words"
        await trio.sleep(IDLE)
        assert parker.parked == 1
        await y.send_all(b"answer")
        await y.send_eof()
        got = bytearray()
        await recv_all(x, got)
        assert bytes(got) == b"answer"
    assert parker.parked == 0


async def test_idle_timeout_fires_while_parked(autojump_clock: trio.testing.MockClock) -> None:
    x, a = await tcp_pair()
    b, y = await tcp_pair()
    t0 = trio.current_time()
    with pytest.raises(IdleTimeout):
        await pump(a, b, idle_timeout=60)
    assert 60 <= trio.current_time() - t0 < 60 + 0.1
    assert await x.receive_some(10) == b""
    assert await y.receive_some(10) == b""
    assert current_parker().parked == 0


async def test_cancel_while_parked_closes_both(autojump_clock: trio.testing.MockClock) -> None:
    x, a = await tcp_pair()
    b, y = await unix_pair()
    parker = current_parker()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, a, b)
        await trio.sleep(IDLE)
        assert parker.parked == 1
        nursery.cancel_scope.cancel()  # e.g. the drain deadline
    assert await x.receive_some(10) == b""
    assert await y.receive_some(10) == b""
    assert parker.parked == 0


async def test_stream_closed_under_a_parked_pump(autojump_clock: trio.testing.MockClock) -> None:
    _x, a = await tcp_pair()  # _x kept referenced: open
    b, y = await tcp_pair()
    counters = PumpCounters()
    parker = current_parker()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pump(a, b, counters=counters))
            await trio.sleep(IDLE)
            assert parker.parked == 1
            await a.aclose()  # no epoll event: the sweep notices the fd is gone
    assert counters.end_reason.startswith("reset")
    assert await y.receive_some(10) == b""


async def test_copy_path_never_parks(autojump_clock: trio.testing.MockClock) -> None:
    x, a = await tcp_pair()
    b, y = await unix_pair()
    parker = current_parker()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: pump(a, b, splice=False))
        await trio.sleep(IDLE)
        assert parker.parked == 0
        await x.send_all(b"copy")
        assert await y.receive_some(10) == b"copy"
        await x.send_eof()
        await y.send_eof()
    assert parker.parked == 0


async def test_daemon_streams_park_relay_byte_exact_and_drain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Through the relay daemon: idle streams park, then carry bulk byte-exact
    (origin header first), and a drain cuts parked streams at its deadline."""
    app = Appliance()
    parker = current_parker()
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port),
            tcp=(TcpListener(name="t", vm="vm", port=0),),
            timeouts=TimeoutsConfig(connect=5.0, drain=10.0),
        )
        d = await start_relay(n, cfg)
        rport = d.bound["t"][1]
        clients = [await trio.open_tcp_stream("127.0.0.1", rport) for _ in range(20)]
        for i, c in enumerate(clients):
            assert await roundtrip(c, b"hello %d" % i) == b"hello %d" % i
        await trio.sleep(IDLE)
        assert parker.parked == 20 and d.active_streams() == 20
        for i, c in enumerate(clients[:10]):
            data = pattern(300_000, i)
            assert await roundtrip(c, data) == data
        finishing = clients[0]
        await trio.sleep(IDLE)
        assert parker.parked == 20
        await d.terminate()
        await finishing.aclose()
        await app.streams[0].closed.wait()
        assert bytes(app.streams[0].data) == b"hello 0" + pattern(300_000, 0)
        assert app.streams[0].header.vm == "vm"
        t0 = trio.current_time()
        await d.stopped.wait()  # the 19 others, parked, are cut at the drain deadline
        assert 9 <= trio.current_time() - t0 <= 10.5
        for c in clients[1:]:
            assert await c.receive_some(10) == b""
        assert parker.parked == 0
        n.cancel_scope.cancel()
