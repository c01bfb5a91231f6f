"""common.io.streamlayers: one walk through wrapper streams to the layer asked for."""

from __future__ import annotations

import ssl

import trio
import trio.testing

from common.io.streamlayers import find_layer, layers


async def test_finds_the_socket_under_tls_and_the_tls_itself() -> None:
    a, b = trio.socket.socketpair()
    raw = trio.SocketStream(a)
    tls = trio.SSLStream(raw, ssl.create_default_context(), server_hostname="vspc.test")
    try:
        assert list(layers(tls)) == [tls, raw]
        assert find_layer(tls, trio.SocketStream) is raw
        assert find_layer(tls, trio.SSLStream) is tls
        assert find_layer(raw, trio.SocketStream) is raw
        assert find_layer(raw, trio.SSLStream) is None
    finally:
        await raw.aclose()
        b.close()


def test_a_stream_without_a_socket_has_none() -> None:
    mem, _ = trio.testing.memory_stream_pair()
    assert list(layers(mem)) == [mem]
    assert find_layer(mem, trio.SocketStream) is None
