from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.proto.console import protocol as proto


def test_request_round_trip() -> None:
    for req in (
        proto.ListRequest(),
        proto.AttachRequest("vm1"),
        proto.AttachRequest("42 1d", label="com2", mode="exclusive", replay=99),
        proto.AttachRequest("vm1", notices=False),
    ):
        line = proto.encode_request(req)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert proto.decode_request(line[:-1]) == req


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"not json",
        b"[]",
        b'{"op":"zap"}',
        b'{"op":"attach"}',
        b'{"op":"attach","vm":""}',
        b'{"op":"attach","vm":"x","mode":"god"}',
        b'{"op":"attach","vm":"x","replay":-1}',
        b'{"op":"attach","vm":"x","replay":true}',
        b'{"op":"attach","vm":"x","label":5}',
        b'{"op":"attach","vm":"x","notices":"no"}',
        b"\xff\xfe",
    ],
)
def test_bad_requests_are_protocol_errors(line: bytes) -> None:
    with pytest.raises(proto.ProtocolError):
        proto.decode_request(line)


@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=20), st.binary(max_size=50))
def test_line_reader_any_chunking(line: bytes, cuts: list[int], tail: bytes) -> None:
    line = line.replace(b"\n", b"")
    wire = line + b"\n" + tail
    reader = proto.LineReader(limit=1000)
    got = None
    pos = 0
    for n in [*cuts, len(wire)]:
        if got is not None or pos >= len(wire):
            break
        got = reader.feed(wire[pos : pos + n])
        pos += n
    assert got is not None
    first, rest = got
    assert first == line
    assert rest + wire[pos:] == tail


@given(st.binary(max_size=2000))
def test_line_reader_bounded(junk: bytes) -> None:
    reader = proto.LineReader(limit=100)
    try:
        for i in range(0, len(junk), 37):
            if reader.feed(junk[i : i + 37]) is not None:
                return
    except proto.ProtocolError:
        return
    assert len(reader._buf) <= 100 + 37
