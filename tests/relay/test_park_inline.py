"""Inline forwarding by the parker's reactor thread (relay.park, real clock):
an interactive pump parks at once and its small messages are relayed by the
reactor; bulk, a full destination, EOF, a reset, an idle timeout and a cancel
hand it back to its task with nothing lost."""

from __future__ import annotations

import socket
import struct
from functools import partial

import pytest
import trio
import trio.testing

from relay.park import Handoff, Parker, current_parker
from relay.pump import PARK_STREAK, IdleTimeout, PumpCounters, pump
from tests.relay.test_pump import payload, recv_all, recv_n, tcp_pair, unix_pair

pytestmark = pytest.mark.parametrize("kind", ["tcp", "unix"])


async def pair(kind: str) -> tuple[trio.SocketStream, trio.SocketStream]:
    return await (tcp_pair() if kind == "tcp" else unix_pair())


async def two_pairs(
    kind: str,
) -> tuple[trio.SocketStream, trio.SocketStream, trio.SocketStream, trio.SocketStream]:
    """x <-> a and b <-> y: the pump runs between a and b, the test talks on x and y."""
    x, a = await pair(kind)
    b, y = await pair(kind)
    return x, a, b, y


async def ping(x: trio.abc.Stream, y: trio.abc.Stream, msg: bytes) -> None:
    """x -> y then the same back y -> x, checked byte for byte."""
    await x.send_all(msg)
    got = bytearray()
    await recv_n(y, got, len(msg))
    assert got == msg
    await y.send_all(msg[::-1])
    back = bytearray()
    await recv_n(x, back, len(msg))
    assert back == msg[::-1]


def forwarded(parker: Parker) -> int:
    """Messages the reactor has forwarded, read under its lock: the reactor writes a
    message, then counts it, so a peer may have read it before the count is up."""
    with parker._mu:
        return parker.forwarded


async def chat_until_parked(x: trio.abc.Stream, y: trio.abc.Stream) -> None:
    parker = current_parker()
    assert parker.inline
    for i in range(PARK_STREAK + 2):
        await ping(x, y, b"keystroke %d\n" % i)
    await trio.testing.wait_all_tasks_blocked()
    assert parker.parked == 1


async def test_interactive_pump_parks_and_forwards_inline(kind: str) -> None:
    x, a, b, y = await two_pairs(kind)
    counters = PumpCounters()
    parker = current_parker()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(pump, a, b, counters=counters))
        await chat_until_parked(x, y)
        before = forwarded(parker)
        for i in range(50):
            await ping(x, y, payload(1 + i * 37, i))
        assert forwarded(parker) >= before + 100  # both ways, no wake of the pump
        assert parker.parked == 1
        sent = sum(len(b"keystroke %d\n" % i) for i in range(PARK_STREAK + 2))
        sent += sum(1 + i * 37 for i in range(50))
        assert counters.a_to_b == counters.b_to_a == sent
        await x.aclose()
        await y.aclose()
    assert parker.parked == 0


async def test_bulk_after_inline_is_byte_exact_then_parks_again(kind: str) -> None:
    x, a, b, y = await two_pairs(kind)
    parker = current_parker()
    big = payload(3 << 20, 7)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, a, b)
        await chat_until_parked(x, y)
        got = bytearray()
        async with trio.open_nursery() as inner:
            inner.start_soon(recv_n, y, got, len(big))
            for i in range(0, len(big), 200_003):
                await x.send_all(big[i : i + 200_003])
        assert got == big
        await chat_until_parked(x, y)  # interactive again: parked again
        await x.aclose()
        await y.aclose()
    assert parker.parked == 0


async def test_full_destination_hands_back_and_delivers_everything(kind: str) -> None:
    x, a, b, y = await two_pairs(kind)
    data = b"".join(struct.pack(">I", i) + b"." * 996 for i in range(6000))  # 6 MB of 1000 B
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, a, b)
        await chat_until_parked(x, y)

        async def sender() -> None:
            for i in range(0, len(data), 1000):  # small messages; y does not read yet
                await x.send_all(data[i : i + 1000])
            await x.send_eof()

        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()  # the sender is stuck: everything is full
        got = bytearray()
        await recv_all(y, got)
        assert got == data
        await y.aclose()


async def test_eof_while_parked_inline_half_closes(kind: str) -> None:
    x, a, b, y = await two_pairs(kind)
    counters = PumpCounters()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(pump, a, b, counters=counters))
        await chat_until_parked(x, y)
        await x.send_all(b"last words")
        await x.send_eof()
        got = bytearray()
        await recv_all(y, got)  # ends with EOF: the half-close went through
        assert got == b"last words"
        await y.send_all(b"still open the other way")
        back = bytearray()
        await recv_n(x, back, 24)
        assert back == b"still open the other way"
        await y.send_eof()
        assert await x.receive_some(10) == b""
    assert counters.end_reason == "eof"


async def test_reset_while_parked_inline_ends_quietly(kind: str) -> None:
    x, a, b, y = await two_pairs(kind)
    counters = PumpCounters()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(pump, a, b, counters=counters))
        await chat_until_parked(x, y)
        if kind == "tcp":  # RST instead of FIN
            x.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await y.send_all(b"unread by x")  # a unix socket closed with unread data resets
        if kind == "unix":
            await trio.testing.wait_all_tasks_blocked()
            await recv_n(x, bytearray(), 11)
            await y.send_all(b"more")  # left unread in x
            await trio.testing.wait_all_tasks_blocked()
        await x.aclose()
        await recv_all(y, bytearray())  # the pump closed y's peer
    assert counters.end_reason in ("eof",) or counters.end_reason.startswith("reset")


async def test_idle_timeout_counts_inline_traffic(kind: str) -> None:
    x, a, b, y = await two_pairs(kind)
    parker = current_parker()
    with pytest.RaisesGroup(IdleTimeout, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            # (a wide margin between pacing and timeout: a loaded machine may pause us)
            nursery.start_soon(partial(pump, a, b, idle_timeout=1.5))
            await chat_until_parked(x, y)
            before = forwarded(parker)
            for i in range(16):  # 2.4 s of traffic, 0.15 s apart: forwarded inline
                await trio.sleep(0.15)  # pacing the traffic, not synchronisation
                await ping(x, y, b"tick %d" % i)
            assert forwarded(parker) >= before + 32
            assert parker.parked == 1  # still alive, still parked
            start = trio.current_time()
            await recv_all(y, bytearray())  # silence: the pump times out, y sees EOF
            assert 1.0 < trio.current_time() - start < 8.0
    assert parker.parked == 0


async def test_cancel_while_parked_inline_closes_both(kind: str) -> None:
    x, a, b, y = await two_pairs(kind)
    parker = current_parker()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, a, b)
        await chat_until_parked(x, y)
        nursery.cancel_scope.cancel()
    assert parker.parked == 0
    assert await x.receive_some(10) == b""
    assert await y.receive_some(10) == b""


class _QuietSession:
    """A Parkable whose fds never carry a byte in this test (the reactor never asks
    it for routes)."""

    busy = False
    reading = 0
    live = 1

    def park_now(self) -> None:
        pass

    def parked_fds_valid(self) -> bool:
        return True

    def moved_inline(self, direction: int, n: int) -> None:
        raise AssertionError("nothing is forwarded in this test")

    def routes(self) -> tuple[()]:
        raise AssertionError("nothing is forwarded in this test")


async def test_cancel_racing_a_hand_off_keeps_the_handed_bytes(kind: str) -> None:
    """The reactor handed a parked pump bytes it read (the wake-up is queued for the
    trio thread) and, before that wake-up runs, the pump's wait is cancelled (its idle
    deadline passed, or a drain): the wait still returns the hand-off, so its bytes
    are delivered instead of dropped."""
    x, a = await pair(kind)
    parker = current_parker()
    assert parker.inline
    fd = a.socket.fileno()
    handoff: list[Handoff] = [(0, "data", b"read by the reactor", None)]
    got: list[object] = []
    cancelled = []
    scope = trio.CancelScope()

    async def parked() -> None:
        with scope:
            got.append(await parker.park(_QuietSession(), (fd,)))
        cancelled.append(scope.cancelled_caught)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(parked)
        await trio.testing.wait_all_tasks_blocked()
        entry = parker._parked[fd]
        with parker._mu:  # as the reactor thread does it
            parker._hand_off(entry, handoff)
        scope.cancel()  # before the trio thread ran the queued wake-up
    assert got == [handoff]
    assert cancelled == [False]
    assert parker.parked == 0
    await x.aclose()
    await a.aclose()
