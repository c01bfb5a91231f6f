"""A client on a plain socket is written straight from ``push`` while nothing is
queued or being sent; what the socket does not take waits in the queue, in order."""

from __future__ import annotations

import socket

import trio
import trio.testing

from common.io import fastsock
from vspc.console.clientqueue import Client

LIMIT = 64 << 20


def pair(sndbuf: int | None = None) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    a, b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if sndbuf is not None:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    return a, b


def direct_client(a: trio.socket.SocketType, initial: bytes = b"") -> Client:
    c = Client("ro", "peer", initial)
    c.direct = fastsock.fast_socket(a)
    assert c.direct is not None
    return c


async def read_exactly(b: trio.socket.SocketType, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await b.recv(1 << 20)
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


async def sender(c: Client, a: trio.socket.SocketType) -> None:
    """What the console service's sender does with a plain socket."""
    fast = fastsock.fast_socket(a)
    assert fast is not None
    while parts := await c.next_parts():
        await fast.send_all_parts(parts)


async def test_push_writes_an_idle_socket_at_once_without_queueing() -> None:
    a, b = pair()
    with a, b:
        c = direct_client(a)
        assert c.push(b"hello", LIMIT) and c.push(memoryview(b"--world")[2:], LIMIT)
        assert c.queued == 0 and not c.chunks and c.sent == 10
        assert await read_exactly(b, 10) == b"helloworld"


async def test_what_the_socket_does_not_take_is_queued_and_sent_in_order() -> None:
    a, b = pair(sndbuf=16 * 1024)
    with a, b:
        c = direct_client(a)
        pieces = [bytes([i]) * (300 * 1024 + i) for i in range(8)]
        for p in pieces:
            assert c.push(p, LIMIT)
        assert c.queued > 0  # the socket filled up: the rest waits for the sender
        assert c.sent + c.queued == sum(map(len, pieces))
        want = b"".join(pieces)
        async with trio.open_nursery() as n:
            n.start_soon(sender, c, a)
            got = await read_exactly(b, len(want))
            c.close()
        assert got == want and c.queued == 0 and c.sent == len(want)


async def test_parts_held_by_the_sender_go_before_a_later_push() -> None:
    a, b = pair()
    with a, b:
        c = direct_client(a, initial=b"replay.")
        assert c.push(b"first.", LIMIT)  # the replay is queued: this one waits behind it
        parts = await c.next_parts()  # the sender holds them, not sent yet
        assert b"".join(bytes(p) for p in parts) == b"replay.first."
        assert c.push(b"second.", LIMIT)  # must not overtake the held parts
        assert c.queued == len(b"second.")
        fast = fastsock.fast_socket(a)
        assert fast is not None
        await fast.send_all_parts(parts)
        assert [bytes(p) for p in await c.next_parts()] == [b"second."]
        await fast.send_all_parts([b"second."])
        c.close()
        assert await c.next_parts() == []
        assert await read_exactly(b, 20) == b"replay.first.second."


async def test_the_sender_waiting_is_not_woken_for_bytes_already_sent() -> None:
    a, b = pair()
    with a, b:
        c = direct_client(a)
        woken: list[int] = []

        async def wait_parts() -> None:
            woken.append(len(await c.next_parts()))

        async with trio.open_nursery() as n:
            n.start_soon(wait_parts)
            await trio.testing.wait_all_tasks_blocked()
            assert c.push(b"x" * 1000, LIMIT)
            await trio.testing.wait_all_tasks_blocked()
            assert woken == []  # written by push itself: nothing for the sender
            c.close()
        assert woken == [0] and await read_exactly(b, 1000) == b"x" * 1000


async def test_a_gone_peer_costs_push_nothing_and_the_bytes_stay_queued() -> None:
    a, b = pair()
    with a:
        c = direct_client(a)
        b.close()
        assert c.push(b"lost?", LIMIT)  # no exception into the VM's reader
        assert c.direct is None and c.queued == 5
        assert [bytes(p) for p in await c.next_parts()] == [b"lost?"]


async def test_a_closed_client_is_no_longer_written_directly() -> None:
    a, b = pair()
    with a, b:
        c = direct_client(a)
        c.close(b"bye\r\n")
        assert c.direct is None
        assert c.push(b"late", LIMIT) and c.queued == 5  # ignored after close
        assert [bytes(p) for p in await c.next_parts()] == [b"bye\r\n"]
