"""The forwarded-link preamble (sans-IO): round trip, any chunking, hostile bytes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.proto.link.forwarded import MAX_LINE, PreambleDecoder, PreambleError, encode_preamble

names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60)


def feed_chunks(data: bytes, cuts: list[int]) -> tuple[str | None, bytes]:
    dec = PreambleDecoder()
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        ident, rest = dec.feed(data[a:b])
        if ident is not None:
            return ident, rest + data[b:]
    return None, b""


@given(names, st.binary(max_size=200), st.lists(st.integers(0, 400), max_size=12))
def test_any_chunking_gives_the_identity_and_the_link_bytes(
    name: str, after: bytes, cuts: list[int]
) -> None:
    ident = f"vic://host/{name}"
    assert feed_chunks(encode_preamble(ident) + after, cuts) == (ident, after)


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=12))
def test_random_bytes_give_an_identity_or_a_clear_error(data: bytes, cuts: list[int]) -> None:
    dec = PreambleDecoder()
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for a, b in itertools.pairwise(points):
            ident, _ = dec.feed(data[a:b])
            if ident is not None:
                assert ident.startswith("vic://")
                return
    except PreambleError:
        return
    assert len(dec._buf) < MAX_LINE  # undecided input stays bounded


def test_refusals() -> None:
    with pytest.raises(PreambleError):
        PreambleDecoder().feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(PreambleError):
        PreambleDecoder().feed(b"VICLINK 1 " + b"x" * MAX_LINE)
    with pytest.raises(PreambleError):
        PreambleDecoder().feed(b"VICLINK 1 not-a-uri\n")
    with pytest.raises(PreambleError):
        encode_preamble("vic://host/a b")
