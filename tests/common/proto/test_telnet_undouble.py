"""The parser's one-step un-doubling (common.proto.telnet.undouble): the C helper and the
pure-Python reference agree on any input, and the parser's fast path gives exactly the
events of its general path, whichever implementation it uses, however the input is cut."""

from __future__ import annotations

import random
import shutil
import sysconfig
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.proto.telnet import codec, undouble
from common.proto.telnet.codec import Data, Event, TelnetParser

Undouble = Callable[[bytes], bytes | None]
IMPLS: list[Undouble] = [undouble.undouble_py]
if undouble.undouble_c is not None:
    IMPLS.append(undouble.undouble_c)

#: Bytes heavy in 0xFF and Telnet command codes: doubled, lone, trailing IACs, commands.
wire_st = st.lists(
    st.one_of(
        st.binary(max_size=8),
        st.sampled_from([b"\xff", b"\xff\xff", b"\xff\xff\xff", b"\xff\xf1", b"\xff\xfa\x01"]),
        st.sampled_from([b"\xff\xf0", b"\xff\xfb\xe8", b"\xf1", b"\xfe"]),
    ),
    max_size=40,
).map(b"".join)
cuts_st = st.lists(st.integers(min_value=0), max_size=20)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def general_path(chunks: list[bytes]) -> list[list[Event]]:
    """Per chunk, the events of the parser's general path alone (no fast path)."""
    p = TelnetParser()
    return [p._parse(c) for c in chunks]


def fast_path(chunks: list[bytes]) -> list[list[Event]]:
    p = TelnetParser()
    return [p.feed(c) for c in chunks]


@pytest.mark.skipif(
    shutil.which(str(sysconfig.get_config_var("CC") or "cc").split()[0]) is None,
    reason="no C compiler here: the install falls back to the pure-Python path",
)
def test_c_helper_is_built_where_a_compiler_is() -> None:
    """With a compiler at install time (scripts/bootstrap) the C helper is built and used."""
    assert undouble.undouble_c is not None
    assert undouble.undouble is undouble.undouble_c


@pytest.mark.parametrize("impl", IMPLS)
def test_examples(impl: Undouble) -> None:
    assert impl(b"") == b""
    assert impl(b"text") == b"text"
    assert impl(b"a\xff\xffb") == b"a\xffb"
    assert impl(b"\xff\xff\xff\xff") == b"\xff\xff"
    for not_plain in (b"\xff", b"a\xff", b"\xff\xff\xff", b"\xff\xf1", b"a\xff\xffb\xff\xfb\x01"):
        assert impl(not_plain) is None


@pytest.mark.parametrize("impl", IMPLS)
def test_random_binary_as_escaped(impl: Undouble) -> None:
    payload = random.Random(7).randbytes(300_000)
    assert impl(codec.escape(payload)) == payload
    assert impl(codec.escape(payload) + b"\xff") is None  # an IAC ending the chunk


@settings(max_examples=500)
@given(wire_st)
def test_c_equals_reference(data: bytes) -> None:
    for impl in IMPLS:
        assert impl(data) == undouble.undouble_py(data)


@settings(max_examples=300)
@pytest.mark.parametrize("impl", IMPLS)
@given(data=wire_st, cuts=cuts_st)
def test_fast_path_equals_general_path(impl: Undouble, data: bytes, cuts: list[int]) -> None:
    chunks = split_at(data, cuts)
    saved = getattr(codec, "undouble")  # noqa: B009 (the parser looks it up per call)
    setattr(codec, "undouble", impl)  # noqa: B010
    try:
        assert fast_path(chunks) == general_path(chunks)
    finally:
        setattr(codec, "undouble", saved)  # noqa: B010


@given(st.binary(max_size=2000), cuts_st)
def test_escaped_binary_any_cut_is_preserved(payload: bytes, cuts: list[int]) -> None:
    events = fast_path(split_at(codec.escape(payload), cuts))
    got = b"".join(e.data for ev in events for e in ev if isinstance(e, Data))
    assert got == payload
