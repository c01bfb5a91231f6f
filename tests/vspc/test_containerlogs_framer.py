"""The sans-IO line framer and the record format (vspc.core.linelog)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vspc.core.linelog import (
    LineFramer,
    LineLogError,
    LogLine,
    Stream,
    parse_record,
    parse_time,
    rfc3339nano,
    to_ns,
)

T0 = 1_796_000_000.25  # an afternoon in 2026


def frame(chunks: list[bytes], max_line: int, now: float = T0) -> list[LogLine]:
    f = LineFramer(Stream.STDOUT, max_line)
    out: list[LogLine] = []
    for c in chunks:
        out += f.feed(c, now)
        assert f.held <= max_line
    return out + f.eof(now)


def rebuild(lines: list[LogLine]) -> bytes:
    return b"".join(line.text + (b"" if line.partial else b"\n") for line in lines)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(st.binary(max_size=300).map(lambda b: b.replace(b"\x01", b"\n")))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(chunked(), st.integers(1, 40))
def test_any_chunking_gives_the_same_lines(case: tuple[bytes, list[bytes]], max_line: int) -> None:
    data, chunks = case
    whole = frame([data], max_line)
    assert frame(chunks, max_line) == whole
    assert rebuild(whole) == data  # nothing lost, nothing added
    for line in whole:
        assert b"\n" not in line.text and len(line.text) <= max_line


def test_lines_partial_lines_and_eof() -> None:
    f = LineFramer(Stream.STDERR, 8)
    assert f.feed(b"ab", T0) == []
    assert f.held == 2
    got = f.feed(b"c\nde", T0 + 1)
    assert got == [LogLine(to_ns(T0 + 1), Stream.STDERR, False, b"abc")]
    # a line longer than max_line is cut and flagged partial
    got = f.feed(b"fghijklmnop\n", T0 + 2)
    assert [(x.partial, x.text) for x in got] == [(True, b"defghijk"), (False, b"lmnop")]
    assert f.feed(b"tail", T0 + 3) == []
    assert f.eof(T0 + 4) == [LogLine(to_ns(T0 + 4), Stream.STDERR, True, b"tail")]
    assert f.eof(T0 + 5) == []
    with pytest.raises(LineLogError) as e:
        f.feed(b"x", T0 + 6)
    assert e.value.code == "framer-closed"


def test_a_line_exactly_max_line_long_is_full() -> None:
    assert frame([b"abcd", b"\n"], 4) == [LogLine(to_ns(T0), Stream.STDOUT, False, b"abcd")]
    assert [x.partial for x in frame([b"abcde\n"], 4)] == [True, False]


@given(st.integers(0, 4_102_444_800 * 10**9))
def test_time_round_trip(ns: int) -> None:
    text = rfc3339nano(ns)
    assert len(text) == 30 and text.endswith("Z")
    assert parse_time(text) == ns


@given(
    st.integers(0, 4_102_444_800 * 10**9),
    st.sampled_from(list(Stream)),
    st.booleans(),
    st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")),
)
def test_record_round_trip(ns: int, stream: Stream, partial: bool, text: bytes) -> None:
    line = LogLine(ns, stream, partial, text)
    rec = line.record()
    assert rec.endswith(b"\n") and rec.count(b"\n") == 1
    assert parse_record(rec) == line


def test_record_shape_and_render() -> None:
    line = LogLine(to_ns(0.5), Stream.STDOUT, False, b"hello world")
    assert line.record() == b"1970-01-01T00:00:00.500000000Z stdout F hello world\n"
    assert line.render() == b"hello world\n"
    assert line.render(timestamps=True) == b"1970-01-01T00:00:00.500000000Z hello world\n"
    cut = LogLine(to_ns(0.5), Stream.STDERR, True, b"abc")
    assert cut.render() == b"abc"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b"1970-01-01T00:00:00.5Z stdout F x",
        b"1970-01-01T00:00:00.500000000Z stdin F x",
        b"1970-01-01T00:00:00.500000000Z stdout X x",
        b"1970-01-01T00:00:00.5000",
    ],
)
def test_malformed_records_are_refused(raw: bytes) -> None:
    with pytest.raises(LineLogError) as e:
        parse_record(raw)
    assert e.value.code == "bad-record"
