from hypothesis import given
from hypothesis import strategies as st

from common.ops.wiretext import wire


def test_newline_cannot_forge_a_log_line() -> None:
    forged = "telnet://x\n2026-12-07 12:00:00 INFO vspc: admin logged in"
    out = wire(forged)
    assert "\n" not in out
    assert "\\n2026" in out


def test_escape_sequences_and_separators_are_shown_not_obeyed() -> None:
    out = wire("a\x1b[2Jb\u2028c\x00\x7f\\")
    assert out == "a\\x1b[2Jb\\u2028c\\x00\\x7f\\\\"


def test_length_is_capped_and_the_cut_is_counted() -> None:
    out = wire("x" * 10_000, limit=50)
    assert out == "x" * 50 + "...(+9950)"


def test_bytes_with_invalid_utf8() -> None:
    assert wire(b"ok\xff\n") == "ok\\xff\\n"
    assert wire(None) == "-"


@given(st.one_of(st.text(), st.binary()))
def test_any_input_is_one_printable_bounded_line(value: str | bytes) -> None:
    out = wire(value, limit=40)
    assert all(c.isprintable() for c in out)
    assert len(out) <= 40 * 10 + 20
