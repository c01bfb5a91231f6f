"""common.io.splice.fd_layer: which raw fd a stream reads and writes through."""

from __future__ import annotations

import os

import trio
import trio.testing

from common.io.splice import fd_layer, read_fd, write_fd


async def test_stapled_stream_reads_and_writes_through_its_own_halves() -> None:
    a, b = trio.socket.socketpair()
    sock = trio.SocketStream(a)
    r, w = os.pipe()
    pipe_in = trio.lowlevel.FdStream(r)
    os.close(w)
    both = trio.StapledStream(sock, pipe_in)
    try:
        assert fd_layer(both, receive=True) is pipe_in
        assert fd_layer(both, receive=False) is sock
        assert read_fd(both) == pipe_in.fileno()
        assert write_fd(both) == a.fileno()
    finally:
        await both.aclose()
        b.close()
    assert read_fd(both) is None  # closed: no fd to splice
    assert write_fd(both) is None


def test_a_stream_without_an_fd_has_none() -> None:
    mem, _ = trio.testing.memory_stream_pair()
    assert fd_layer(mem, receive=True) is None
    assert read_fd(mem) is None
    assert write_fd(mem) is None
