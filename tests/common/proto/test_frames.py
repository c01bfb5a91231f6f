"""Peer-link frame codec: round trips, arbitrary chunking, arbitrary garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.proto.link import frames as F
from common.proto.link.decoder import FrameDecoder
from common.proto.link.frames import LinkProtocolError

sids = st.integers(1, F.MAX_STREAM_ID)
offs = st.integers(0, F.MAX_OFFSET)
reasons = st.text(max_size=50)

frame_st = st.one_of(
    st.builds(F.Hello, st.integers(0, 255), st.integers(0, 2**32 - 1)),
    st.builds(
        F.Open,
        sids,
        st.binary(min_size=16, max_size=16),
        offs,
        st.binary(max_size=300),
        st.booleans(),
    ),
    st.builds(
        F.Open,
        sids,
        st.binary(min_size=16, max_size=16),
        offs,
        st.binary(max_size=300),
        st.just(False),
        offs,
    ),
    st.builds(F.Data, sids, offs, st.binary(max_size=2000)),
    st.builds(F.Window, sids, st.integers(1, F.MAX_WINDOW_INCREMENT)),
    st.builds(F.Ack, sids, offs, st.booleans()),
    st.builds(F.Eof, sids, offs),
    st.builds(F.Reset, sids, st.integers(0, 65535), reasons),
    st.builds(F.Ping, st.binary(min_size=8, max_size=8)),
    st.builds(F.Pong, st.binary(min_size=8, max_size=8)),
    st.builds(F.GoAway, st.integers(0, F.MAX_STREAM_ID), st.integers(0, 65535), reasons),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


@given(st.lists(frame_st, max_size=20), st.lists(st.integers(0, 10**6), max_size=30))
@settings(max_examples=300)
def test_roundtrip_any_chunking(frames: list[F.Frame], cuts: list[int]) -> None:
    wire = b"".join(F.encode(f) for f in frames)
    dec = FrameDecoder()
    got: list[F.Frame] = []
    for piece in chunked(wire, cuts):
        got += dec.feed(piece)
    assert got == frames
    assert dec.buffered == 0


@given(st.binary(max_size=4000), st.lists(st.integers(0, 10**6), max_size=10))
@settings(max_examples=500)
def test_garbage_never_crashes_or_grows(data: bytes, cuts: list[int]) -> None:
    dec = FrameDecoder(max_payload=1024)
    try:
        for piece in chunked(data, cuts):
            dec.feed(piece)
            assert dec.buffered <= F.HEADER_SIZE + 1024 + len(piece)
    except LinkProtocolError:
        with pytest.raises(LinkProtocolError):
            dec.feed(b"")  # stays dead


def test_oversize_frame_rejected_from_header_alone() -> None:
    dec = FrameDecoder(max_payload=1000)
    hdr = F.HEADER.pack(F.FrameType.DATA, 0, 1, 1001)
    with pytest.raises(LinkProtocolError, match="exceeds"):
        dec.feed(hdr)  # no need to wait for the payload


@pytest.mark.parametrize(
    "wire",
    [
        F.HEADER.pack(42, 0, 1, 0),  # unknown type
        F.HEADER.pack(F.FrameType.DATA, 0, 0, 8) + bytes(8),  # DATA on stream 0
        F.HEADER.pack(F.FrameType.DATA, 0, 1, 3) + bytes(3),  # too short for an offset
        F.HEADER.pack(F.FrameType.PING, 0, 5, 8) + bytes(8),  # PING on a stream
        F.HEADER.pack(F.FrameType.WINDOW, 0, 1, 4) + bytes(4),  # zero increment
        F.HEADER.pack(F.FrameType.HELLO, 0, 0, 9) + b"HTTP" + bytes(5),  # bad magic
        F.HEADER.pack(F.FrameType.RESET, 0, 1, 3) + b"\x00\x01\xff",  # reason not UTF-8
        F.HEADER.pack(F.FrameType.ACK, 0, 1, 8) + b"\xff" * 8,  # offset beyond 2**63
        F.HEADER.pack(F.FrameType.OPEN, 0, 1, 10) + bytes(10),  # OPEN too short
    ],
)
def test_malformed(wire: bytes) -> None:
    with pytest.raises(LinkProtocolError):
        FrameDecoder().feed(wire)


def test_encode_refuses_unrepresentable() -> None:
    for bad in (
        F.Data(0, 0, b""),
        F.Window(1, 0),
        F.Open(1, b"short", 0, b""),
        F.Ping(b"x"),
        F.Ack(1, -1),
        F.Open(1, bytes(16), 0, bytes(F.MAX_OPEN_HEADER + 1)),
    ):
        with pytest.raises(ValueError):
            F.encode(bad)


def test_reason_truncated_on_character_boundary() -> None:
    frame = F.Reset(1, 2, "é" * 1000)
    (got,) = FrameDecoder().feed(F.encode(frame))
    assert isinstance(got, F.Reset) and got.reason == "é" * (F.MAX_REASON // 2)


def test_data_header_matches_encode() -> None:
    assert F.data_header(7, 99, 3) + b"abc" == F.encode(F.Data(7, 99, b"abc"))


big_data = st.builds(
    F.Data,
    sids,
    offs,
    st.integers(F.PENDING_MIN - 9, F.PENDING_MIN * 3).map(lambda n: bytes([n % 251]) * n),
)


@given(
    st.lists(st.one_of(frame_st, big_data), max_size=8),
    st.lists(st.integers(0, 10**6), max_size=40),
)
@settings(max_examples=200)
def test_large_payloads_any_chunking_reused_buffer(frames: list[F.Frame], cuts: list[int]) -> None:
    """Large DATA payloads are assembled in place; the fed buffer may be reused at once."""
    wire = b"".join(F.encode(f) for f in frames)
    dec = FrameDecoder()
    got: list[F.Frame] = []
    scratch = bytearray(len(wire) + 1)
    for piece in chunked(wire, cuts):
        scratch[: len(piece)] = piece
        got += dec.feed(memoryview(scratch)[: len(piece)])
        scratch[: len(piece)] = bytes(len(piece))  # the caller reuses its buffer
    assert got == frames
    assert dec.buffered == 0


@given(
    st.lists(st.one_of(frame_st, big_data), max_size=8),
    st.lists(st.integers(1, 10**6), max_size=40),
)
@settings(max_examples=200)
def test_payloads_received_in_place(frames: list[F.Frame], sizes: list[int]) -> None:
    """A reader that puts bytes straight into ``receive_buffer()`` (as the link does)
    gets the same frames as one that feeds everything, whatever its read sizes."""
    wire = memoryview(b"".join(F.encode(f) for f in frames))
    dec = FrameDecoder()
    got: list[F.Frame] = []
    pos, i = 0, 0
    while pos < len(wire):
        want = sizes[i % len(sizes)] if sizes else 1 << 20
        i += 1
        target = dec.receive_buffer()
        if target is not None:
            k = min(want, len(target), len(wire) - pos)
            target[:k] = wire[pos : pos + k]
            got += dec.filled(k)
        else:
            k = min(want, len(wire) - pos)
            got += dec.feed(wire[pos : pos + k])
        pos += k
    assert got == frames
    assert dec.buffered == 0 and dec.receive_buffer() is None


@given(
    st.lists(st.one_of(frame_st, big_data), max_size=8),
    st.lists(st.integers(1, 10**6), max_size=40),
    st.lists(st.booleans(), min_size=1, max_size=8),
)
@settings(max_examples=200)
def test_payloads_passed_elsewhere(
    frames: list[F.Frame], sizes: list[int], choices: list[bool]
) -> None:
    """A reader that passes a large payload's bytes itself when it likes (reading only a
    header after each, as the link does) gets the other frames as usual and, per
    stream, the same DATA bytes at the same offsets, each byte once."""
    wire = memoryview(b"".join(F.encode(f) for f in frames))
    dec = FrameDecoder()
    got: list[F.Frame] = []
    pos, i = 0, 0
    while pos < len(wire):
        want = sizes[i % len(sizes)] if sizes else 1 << 20
        i += 1
        target = dec.pass_target()
        if target is not None and (dec.passing or choices[i % len(choices)]):
            k = min(want, target[2])
            sid, off = dec.pass_bytes(k)
            assert (sid, off) == target[:2]
            got.append(F.Data(sid, off, bytes(wire[pos : pos + k])))
        elif (buf := dec.receive_buffer()) is not None:
            k = min(want, len(buf), len(wire) - pos)
            buf[:k] = wire[pos : pos + k]
            got += dec.filled(k)
        else:
            k = min(want, F.HEADER_SIZE + 8, len(wire) - pos)
            got += dec.feed(wire[pos : pos + k])
        pos += k
    assert [f for f in got if not isinstance(f, F.Data)] == [
        f for f in frames if not isinstance(f, F.Data)
    ]
    for sid in {f.stream_id for f in frames if isinstance(f, F.Data)}:
        want_bytes = [
            (f.offset, f.payload) for f in frames if isinstance(f, F.Data) and f.stream_id == sid
        ]
        parts = [(f.offset, f.payload) for f in got if isinstance(f, F.Data) and f.stream_id == sid]
        assert joined(parts) == joined(want_bytes)
    assert dec.buffered == 0 and dec.pass_target() is None


def joined(parts: list[tuple[int, bytes | bytearray]]) -> list[tuple[int, bytes]]:
    """DATA pieces with their contiguous neighbours merged."""
    out: list[tuple[int, bytes]] = []
    for off, b in parts:
        if out and out[-1][0] + len(out[-1][1]) == off and b:
            out[-1] = (out[-1][0], out[-1][1] + bytes(b))
        else:
            out.append((off, bytes(b)))
    return out


def test_pass_refusals() -> None:
    dec = FrameDecoder()
    payload = bytes(F.PENDING_MIN * 2)
    wire = F.encode(F.Data(3, 7, payload))
    assert dec.feed(wire[: F.HEADER_SIZE + 8]) == []
    assert dec.pass_target() == (3, 7, len(payload)) and not dec.passing
    with pytest.raises(ValueError):
        dec.pass_bytes(len(payload) + 1)
    assert dec.pass_bytes(10) == (3, 7) and dec.passing
    assert dec.receive_buffer() is None  # the rest must be passed too
    with pytest.raises(ValueError):
        dec.feed(b"x")
    assert dec.pass_bytes(len(payload) - 10) == (3, 17)
    assert not dec.passing and dec.pass_target() is None
    dec.feed(wire[:100])  # some bytes copied: no longer passable
    assert dec.pass_target() is None and dec.receive_buffer() is not None


def test_filled_beyond_the_buffer_is_refused() -> None:
    dec = FrameDecoder()
    payload = bytes(F.PENDING_MIN * 2)
    wire = F.encode(F.Data(1, 0, payload))
    assert dec.feed(wire[:100]) == []
    target = dec.receive_buffer()
    assert target is not None and len(target) == len(wire) - 100
    with pytest.raises(ValueError):
        dec.filled(len(target) + 1)
    target[:] = wire[100:]
    assert dec.filled(len(target)) == [F.Data(1, 0, payload)]
    assert dec.filled(0) == []


def test_continue_open() -> None:
    fr = F.Open(3, b"s" * 16, 7, b"hdr", continues=1 << 40)
    wire = F.encode(fr)
    assert wire[1] == F.FLAG_CONTINUE
    assert FrameDecoder().feed(wire) == [fr]
    with pytest.raises(ValueError):
        F.encode(F.Open(3, b"s" * 16, 7, b"", resume=True, continues=1))
    both = bytes([wire[0], F.FLAG_CONTINUE | F.FLAG_RESUME]) + wire[2:]
    with pytest.raises(LinkProtocolError, match="both"):
        FrameDecoder().feed(both)
    short = F.encode(F.Open(3, b"s" * 16, 7, b""))
    with pytest.raises(LinkProtocolError, match="CONTINUE"):
        FrameDecoder().feed(bytes([short[0], F.FLAG_CONTINUE]) + short[2:])
