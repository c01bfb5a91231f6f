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


async def test_vectored_sends_arrive_intact_and_in_order() -> None:
    a, b = _pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # many partial sendmsg calls
    send_parts = fastsock.parts_sender(a)
    assert isinstance(getattr(send_parts, "__self__", None), fastsock.FastSocket)
    rng = random.Random(5)
    parts: list[bytes | memoryview] = []
    for _ in range(700):  # more than IOV_MAX in one call
        p = rng.randbytes(rng.randrange(0, 9000))
        parts.append(memoryview(p)[1:] if p and rng.random() < 0.3 else p)
    want = b"".join(bytes(p) for p in parts)
    got = bytearray()

    async def reader() -> None:
        while chunk := await b.receive_some(5000):
            got.extend(chunk)

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await send_parts(parts[:350])
        await send_parts(parts[350:])
        await a.send_eof()
    assert bytes(got) == want
    await a.aclose()
    await b.aclose()


async def test_vectored_send_to_a_gone_peer_is_a_broken_stream() -> None:
    a, b = _pair()
    await b.aclose()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):
            await fastsock.parts_sender(a)([b"x" * 65536, b"y"])
    await a.aclose()


async def test_other_streams_get_one_joined_send() -> None:
    s, r = trio.testing.memory_stream_pair()
    await fastsock.parts_sender(s)([b"ab", memoryview(b"cd"), b"e"])
    assert await r.receive_some() == b"abcde"


def test_unix_send_buffer_grows_and_tcp_is_left_alone() -> None:
    a, b = socket.socketpair()
    with a, b:
        before = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        fastsock.grow_unix_sndbuf(trio.socket.from_stdlib_socket(a), 4 * before)
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) > before
    t = socket.socket()
    with t:
        before = t.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        fastsock.grow_unix_sndbuf(trio.socket.from_stdlib_socket(t), 4 * before)
        assert t.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == before
