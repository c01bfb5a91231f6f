"""common.io.fastsock: direct socket calls behave like the trio stream calls they replace."""

from __future__ import annotations

import random
import socket

import pytest
import trio
import trio.testing

from common.io import fastsock


def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = socket.socketpair()
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), trio.SocketStream(
        trio.socket.from_stdlib_socket(b)
    )


async def test_bulk_bytes_arrive_intact_through_a_small_buffer() -> None:
    a, b = _pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    send_all = fastsock.sender(a)
    receive_some = fastsock.receiver(b)
    assert isinstance(getattr(send_all, "__self__", None), fastsock.FastSocket)
    assert isinstance(getattr(receive_some, "__self__", None), fastsock.FastSocket)
    data = random.Random(1).randbytes(3 * 1024 * 1024)
    got = bytearray()

    async def reader() -> None:
        while chunk := await receive_some(7000):
            got.extend(chunk)

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        for k in range(0, len(data), 256 * 1024):
            await send_all(memoryview(data)[k : k + 256 * 1024])
        await a.send_eof()
    assert bytes(got) == data
    await a.aclose()
    await b.aclose()


async def test_receive_yields_once_per_call_even_when_data_is_waiting() -> None:
    a, b = _pair()
    await a.send_all(b"x" * 1000)
    receive_some = fastsock.receiver(b)
    ran = 0

    async def other() -> None:
        nonlocal ran
        while True:
            ran += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as n:
        n.start_soon(other)
        await trio.lowlevel.checkpoint()
        before = ran
        for _ in range(10):
            assert await receive_some(100) == b"x" * 100
        assert ran - before >= 9  # the other task ran between the reads
        n.cancel_scope.cancel()
    await a.aclose()
    await b.aclose()


async def test_peer_gone_is_a_broken_stream() -> None:
    a, b = _pair()
    await b.aclose()
    send_all = fastsock.sender(a)
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):
            await send_all(b"x" * 65536)
    await a.aclose()


async def test_cancelled_receive_and_send() -> None:
    a, b = _pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    calls = [lambda: fastsock.receiver(b)(100), lambda: fastsock.sender(a)(b"y" * (4 << 20))]
    for call in calls:  # nothing comes / nobody reads: both wait until cancelled
        async with trio.open_nursery() as n:
            n.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            n.cancel_scope.cancel()
        assert n.cancel_scope.cancelled_caught
    await a.aclose()
    await b.aclose()


async def test_other_streams_keep_their_own_methods() -> None:
    s, _ = trio.testing.memory_stream_pair()
    assert fastsock.sender(s) == s.send_all
    assert fastsock.receiver(s) == s.receive_some
