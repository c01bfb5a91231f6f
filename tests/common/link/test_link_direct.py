"""Payloads spliced straight from a plaintext link's socket into the destination socket
(common.link.direct): every byte arrives once and in order, whether the destination
takes them at once, stalls (the rest goes the usual way) or the link dies meanwhile."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from common.link.linkapi import LinkConfig
from common.link.peering import LinkServer, open_session_table
from common.link.resumable import ResumableStream
from common.link.route import Route, Router
from common.proto.link.mux import MuxConfig
from tests.common.link.link_harness import MiB, pattern, small_config


@dataclass
class Out:
    """The acceptor's side: what reached the destination socket, and how."""

    got: bytearray = field(default_factory=bytearray)
    direct: int = 0  # bytes spliced straight in
    written: int = 0  # bytes the application wrote (the usual way)
    done: trio.Event = field(default_factory=trio.Event)
    sndbuf: int = 0  # the destination socket's send buffer (0: the default)


async def deliver(st: ResumableStream, out: Out) -> None:
    """What the pump does: hand the socket to the stream, write what it still returns."""
    a, b = socket.socketpair()
    if out.sndbuf:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, out.sndbuf)
    dst = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    far = trio.socket.from_stdlib_socket(b)

    def moved(n: int) -> None:
        out.direct += n

    async def read_far() -> None:
        while chunk := await far.recv(MiB):
            out.got += chunk
        out.done.set()

    async with trio.open_nursery() as n:
        n.start_soon(read_far)
        st.deliver_to(a.fileno(), moved)
        try:
            while data := await st.receive_some(MiB):
                out.written += len(data)
                await dst.send_all(data)
        finally:
            st.deliver_to(None)
        await dst.send_eof()
        await st.aclose()


@asynccontextmanager
async def direct_acceptor(out: Out) -> AsyncIterator[int]:
    cfg = config()
    async with open_session_table(cfg) as table, trio.open_nursery() as n:
        server = LinkServer(table, tls_files=None, config=cfg)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await n.start(server.serve, listeners)

        async def loop() -> None:
            async for acc in table:
                n.start_soon(deliver, acc.stream, out)

        n.start_soon(loop)
        yield listeners[0].socket.getsockname()[1]
        n.cancel_scope.cancel()


def config() -> LinkConfig:
    return small_config(
        mux=MuxConfig(ping_interval=0.5, dead_after=2.0, max_payload=MiB, stream_window=4 * MiB),
        replay_limit=4 * MiB,
    )


async def send(port: int, data: bytes, kill_every: int = 0) -> int:
    """Send ``data`` on a new stream; returns how many links it took."""
    async with trio.open_nursery() as n:
        router = Router(Route(f"tcp:127.0.0.1:{port}", tls=False), n, config=config())
        st = await router.open_stream(b"d")
        for i in range(0, len(data), MiB):
            await st.send_all(data[i : i + MiB])
            if kill_every and i and i % kill_every == 0 and router.link is not None:
                router.link.close("test: killed")
        await st.send_eof()
        while await st.receive_some():
            pass
        await st.aclose()
        n.cancel_scope.cancel()
    return router.links_opened


async def test_payloads_go_straight_into_the_socket() -> None:
    data = pattern(24 * MiB, seed=5)
    out = Out()
    with trio.fail_after(60):
        async with direct_acceptor(out) as port:
            await send(port, data)
            await out.done.wait()
    assert bytes(out.got) == data
    assert out.direct > 0
    assert out.direct + out.written == len(data)


async def test_a_stalled_destination_gets_the_rest_the_usual_way() -> None:
    data = pattern(12 * MiB, seed=6)
    out = Out(sndbuf=64 * 1024)  # (a payload never fits: its rest goes the usual way)
    with trio.fail_after(60):
        async with direct_acceptor(out) as port:
            await send(port, data)
            await out.done.wait()
    assert bytes(out.got) == data
    assert out.direct > 0 and out.written > 0
    assert out.direct + out.written == len(data)


async def test_link_killed_while_payloads_go_straight_out() -> None:
    data = pattern(24 * MiB, seed=7)
    out = Out()
    with trio.fail_after(60):
        async with direct_acceptor(out) as port:
            links = await send(port, data, kill_every=3 * MiB)
            await out.done.wait()
    assert bytes(out.got) == data
    assert links >= 4 and out.direct > 0
