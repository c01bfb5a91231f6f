"""Hybrid vsock handshake core: both sides, chunking, trailing bytes, hostile lines."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from relay.core.hybrid import (
    MAX_LINE,
    MAX_PORT,
    ConnectRequestParser,
    HybridError,
    HybridReplyParser,
    connect_request,
    ok_reply,
)
from relay.pump import PumpCounters, pump

ports = st.integers(min_value=0, max_value=MAX_PORT)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def _run(
    parser: HybridReplyParser | ConnectRequestParser, chunks: list[bytes]
) -> tuple[int | None, bytes]:
    value: int | None = None
    rest = bytearray()
    for c in chunks:
        v, tail = parser.feed(c)
        if v is not None:
            assert value is None
            value = v
        rest += tail
    return value, bytes(rest)


def test_connect_request_bytes() -> None:
    assert connect_request(52) == b"CONNECT 52\n"
    assert ok_reply(1073741824) == b"OK 1073741824\n"
    for bad in (-1, MAX_PORT + 1, True):
        with pytest.raises(HybridError):
            connect_request(bad)


def test_reply_with_data_in_same_read() -> None:
    p = HybridReplyParser()
    assert p.feed(b"OK 10") == (None, b"")
    assert p.feed(b"73741824\nhello\n") == (1073741824, b"hello\n")
    assert p.done and p.value == 1073741824
    assert p.feed(b"more") == (None, b"more")


@given(ports, st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=12))
def test_reply_any_chunking_keeps_trailing_bytes(n: int, payload: bytes, cuts: list[int]) -> None:
    value, rest = _run(HybridReplyParser(), _chunks(ok_reply(n) + payload, cuts))
    assert value == n
    assert rest == payload


@given(ports, st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=12))
def test_request_any_chunking(port: int, payload: bytes, cuts: list[int]) -> None:
    value, rest = _run(ConnectRequestParser(), _chunks(connect_request(port) + payload, cuts))
    assert value == port
    assert rest == payload


@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=12))
def test_garbage_never_crashes_nor_buffers(data: bytes, cuts: list[int]) -> None:
    for parser in (HybridReplyParser(), ConnectRequestParser()):
        try:
            for c in _chunks(data, cuts):
                parser.feed(c)
                assert len(parser._buf) <= MAX_LINE
        except HybridError as exc:
            assert str(exc)
            with pytest.raises(HybridError):
                parser.feed(b"OK 1\n")


@pytest.mark.parametrize(
    "line",
    [
        b"NOK\n",
        b"OK\n",
        b"OK \n",
        b"OK -1\n",
        b"OK 4294967296\n",
        b"OK 1 2\n",
        b"ok 5\n",
        b"OK 5a\n",
        b"OK \xd9\xa3\n",  # non-ASCII digit
        b"CONNECT 5\n",
        b"OK " + b"1" * 80 + b"\n",
        b"X" * (MAX_LINE + 1),
    ],
)
def test_bad_replies(line: bytes) -> None:
    with pytest.raises(HybridError):
        HybridReplyParser().feed(line)
    p = HybridReplyParser()
    with pytest.raises(HybridError):
        for b in line:
            p.feed(bytes([b]))


@pytest.mark.parametrize(
    "line",
    [b"CONNECT\n", b"CONNECT x\n", b"connect 5\n", b"CONNECT  5\n", b"OK 5\n", b"C" * 65],
)
def test_bad_requests(line: bytes) -> None:
    with pytest.raises(HybridError):
        ConnectRequestParser().feed(line)


def test_crlf_tolerated_and_eof_message() -> None:
    assert HybridReplyParser().feed(b"OK 7\r\nx") == (7, b"x")
    p = ConnectRequestParser()
    p.feed(b"CONN")
    assert "CONN" in str(p.eof_error())


# ---------------------------------------------------------------- over real sockets


async def _muxer_stand_in(listener: trio.SocketListener, greeting: bytes) -> None:
    """A Firecracker-style muxer: CONNECT <port> -> OK <n> (+ guest bytes at once), then echo."""
    stream = await listener.accept()
    parser = ConnectRequestParser()
    port: int | None = None
    rest = b""
    while port is None:
        data = await stream.receive_some(7)  # small reads: the line arrives in pieces
        if not data:
            raise parser.eof_error()
        port, rest = parser.feed(data)
    # The guest speaks first, in the same write as the OK line.
    await stream.send_all(ok_reply(1073741824 + port) + greeting + rest)
    while data := await stream.receive_some(65536):
        await stream.send_all(data)
    await stream.send_eof()


async def test_handshake_then_pump_over_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "v.sock")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(1)
    listener = trio.SocketListener(sock)
    greeting = b"guest says hi\n"
    payload = bytes(range(256)) * 4000
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_muxer_stand_in, listener, greeting)
            vm = await trio.open_unix_socket(path)
            await vm.send_all(connect_request(52))
            reply = HybridReplyParser()
            n: int | None = None
            leftover = b""
            while n is None:
                data = await vm.receive_some(65536)
                if not data:
                    raise reply.eof_error()
                n, leftover = reply.feed(data)
            assert n == 1073741824 + 52
            # Bytes after the OK line belong to the stream: hand them on first, then pump.
            x, a = trio.testing.memory_stream_pair()
            await a.send_all(leftover)
            counters = PumpCounters()
            nursery.start_soon(lambda: pump(a, vm, counters=counters))
            got = bytearray()

            async def read_all() -> None:
                while chunk := await x.receive_some(65536):
                    got.extend(chunk)

            nursery.start_soon(read_all)
            await x.send_all(payload)
            await x.send_eof()
    assert bytes(got) == greeting + payload
    await listener.aclose()
