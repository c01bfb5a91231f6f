"""Origin header codec: round trip, chunking, hostile input."""

from __future__ import annotations

import struct
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.proto.link.header import (
    INGRESS_KINDS,
    MAGIC,
    MAX_FIELD_SIZE,
    MAX_HEADER_SIZE,
    HeaderDecoder,
    HeaderError,
    OriginHeader,
    continued,
    encode_header,
)

_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
_text = st.text(
    alphabet=st.characters(
        min_codepoint=0x20, exclude_characters="\x7f", exclude_categories=_SURROGATES
    ),
    max_size=60,
)
_nonempty = _text.filter(bool)
headers = st.builds(
    OriginHeader,
    host=_nonempty,
    vm=_nonempty,
    kind=st.sampled_from(INGRESS_KINDS),
    label=_text,
    stream_id=_text,
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def _decode_all(chunks: list[bytes]) -> tuple[OriginHeader | None, bytes]:
    dec = HeaderDecoder()
    header: OriginHeader | None = None
    rest = bytearray()
    for chunk in chunks:
        h, tail = dec.feed(chunk)
        if h is not None:
            assert header is None
            header = h
        rest += tail
    return header, bytes(rest)


def test_example_round_trip() -> None:
    h = OriginHeader("esx-01", "42 0f 9a-bc", "vspc", "serial0", "s-17")
    wire = encode_header(h)
    assert wire.startswith(MAGIC)
    dec = HeaderDecoder()
    got, rest = dec.feed(wire + b"\xffpayload")
    assert got == h
    assert rest == b"\xffpayload"
    assert dec.done
    assert dec.feed(b"more") == (None, b"more")


@given(headers, st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=20))
def test_round_trip_any_chunking(h: OriginHeader, payload: bytes, cuts: list[int]) -> None:
    wire = encode_header(h) + payload
    assert len(wire) - len(payload) <= MAX_HEADER_SIZE
    header, rest = _decode_all(_chunks(wire, cuts))
    assert header == h
    assert rest == payload


@given(headers)
def test_byte_at_a_time(h: OriginHeader) -> None:
    wire = encode_header(h)
    dec = HeaderDecoder()
    for i, b in enumerate(wire):
        got, rest = dec.feed(bytes([b]))
        assert rest == b""
        assert (got is not None) == (i == len(wire) - 1)
    assert got == h


@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=20))
def test_garbage_never_crashes_nor_buffers(data: bytes, cuts: list[int]) -> None:
    dec = HeaderDecoder()
    try:
        for chunk in _chunks(data, cuts):
            dec.feed(chunk)
            assert len(dec._buf) <= MAX_HEADER_SIZE
    except HeaderError as exc:
        assert str(exc)
        with pytest.raises(HeaderError):
            dec.feed(b"x")


@given(headers, st.binary(min_size=1, max_size=1), st.integers(min_value=0))
def test_any_corruption_is_error_or_valid(h: OriginHeader, byte: bytes, pos: int) -> None:
    wire = bytearray(encode_header(h))
    wire[pos % len(wire)] = byte[0]
    dec = HeaderDecoder()
    try:
        got, rest = dec.feed(bytes(wire) + b"tail")
    except HeaderError:
        return
    if got is None:
        assert rest == b"" and not dec.done  # length grew: still waiting
    else:
        assert isinstance(got, OriginHeader)


def _raw(version: int, body: bytes, length: int | None = None) -> bytes:
    return MAGIC + struct.pack(">BH", version, len(body) if length is None else length) + body


def _body(*fields: bytes) -> bytes:
    return b"".join(bytes([len(f)]) + f for f in fields)


GOOD = _body(b"h", b"vm", b"tcp", b"l", b"")


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"GET / HTTP/1.1\r\n", "magic"),
        (b"VICX", "magic"),
        (_raw(3, GOOD), "version 3"),
        (_raw(2, GOOD), "offsets missing"),
        (_raw(0, GOOD), "version 0"),
        (_raw(1, GOOD, length=60000), "over"),
        (_raw(1, GOOD + b"\x00", length=len(GOOD) + 1), "too long"),
        (_raw(1, GOOD[:-1], length=len(GOOD) - 1), "too short"),
        (_raw(1, _body(b"h", b"vm", b"tcp", b"l") + b"\x09abc"), "claims 9"),
        (_raw(1, _body(b"h", b"\xff\xfe", b"tcp", b"l", b"")), "UTF-8"),
        (_raw(1, _body(b"", b"vm", b"tcp", b"l", b"")), "'host' is empty"),
        (_raw(1, _body(b"h", b"vm", b"smoke", b"l", b"")), "kind 'smoke'"),
        (_raw(1, _body(b"h", b"v\nm", b"tcp", b"l", b"")), "control character"),
    ],
)
def test_bad_headers(wire: bytes, match: str) -> None:
    dec = HeaderDecoder()
    with pytest.raises(HeaderError, match=match):
        for b in wire:  # also byte by byte: errors must not depend on chunking
            dec.feed(bytes([b]))
    with pytest.raises(HeaderError, match=match):
        HeaderDecoder().feed(wire)


def test_length_lie_waits_then_errors() -> None:
    # A header claiming more bytes than its fields use: the decoder waits for the
    # claimed length (bounded by MAX_BODY_SIZE), then rejects the surplus.
    dec = HeaderDecoder()
    wire = _raw(1, GOOD, length=len(GOOD) + 5)
    assert dec.feed(wire) == (None, b"")
    with pytest.raises(HeaderError, match="too long"):
        dec.feed(b"guest")


@pytest.mark.parametrize(
    "h",
    [
        OriginHeader("", "vm", "tcp", "l"),
        OriginHeader("h", "vm", "nope", "l"),
        OriginHeader("h", "x" * (MAX_FIELD_SIZE + 1), "tcp", "l"),
        OriginHeader("h", "vm", "tcp", "l\x00"),
        OriginHeader("h", "vm", "tcp", "l", version=9),
        OriginHeader("h", "\udcff", "tcp", "l"),
    ],
)
def test_encoder_refuses_what_decoder_would(h: OriginHeader) -> None:
    with pytest.raises(HeaderError):
        encode_header(h)


_offsets = st.integers(0, (1 << 63) - 1)


@given(
    st.builds(continued, headers, _offsets, _offsets),
    st.binary(max_size=40),
    st.lists(st.integers(0, 2000), max_size=8),
)
def test_continuation_round_trip_any_chunking(
    h: OriginHeader, tail: bytes, cuts: list[int]
) -> None:
    wire = encode_header(h)
    assert wire[4] == 2
    got, rest = _decode_all(_chunks(wire + tail, cuts))
    assert got == h and got.continues and rest == tail


def test_continuation_fields() -> None:
    plain = OriginHeader("esx-01", "vm", "tcp", "l", "b-7")
    assert not plain.continues and encode_header(plain)[4] == 1  # version 1 is still what is sent
    c = continued(plain, 1 << 40, 5)
    assert (c.version, c.offset, c.received, c.stream_id) == (2, 1 << 40, 5, "b-7")
    with pytest.raises(HeaderError, match="carries no offsets"):
        encode_header(OriginHeader("h", "vm", "tcp", "l", offset=3))
    with pytest.raises(HeaderError, match="out of range"):
        encode_header(continued(plain, 1 << 63, 0))
    body = encode_header(c)[7:]
    with pytest.raises(HeaderError, match="too long"):
        HeaderDecoder().feed(_raw(2, body + b"x"))
    with pytest.raises(HeaderError, match="out of range"):
        HeaderDecoder().feed(_raw(2, body[:-16] + struct.pack(">QQ", 1 << 63, 0)))
