"""Wire-derived text made safe for a log line.

Anything that came off a socket (a DO-PROXY URI, a VM name, a header field, a
peer's certificate subject) is attacker-controlled: a newline in it would forge a
whole log line, an escape sequence would repaint an operator's terminal, and a
megabyte of it would flood the log. ``wire()`` escapes every non-printable
character (``\\n``, ``\\x1b``, ``\\u2028`` ...) and the backslash itself, and caps
the result, saying how much was cut. Use it for every such string, in every log
call: ``log.info("DO-PROXY %s", wire(uri))``.
"""

from __future__ import annotations

DEFAULT_LIMIT = 120


def _escape_char(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch.isprintable() and ch != "\x7f":
        return ch
    code = ord(ch)
    if code < 0x100:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\x{code:02x}")
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def wire(value: str | bytes | bytearray | memoryview | None, limit: int = DEFAULT_LIMIT) -> str:
    """*value* escaped to printable text and capped at about *limit* characters.

    Bytes are decoded as UTF-8 with invalid bytes shown as ``\\xNN``. The result
    never contains a control character, a line or paragraph separator, or more
    than *limit* characters of the original (plus the escapes and a
    ``...(+N)`` suffix naming how many characters were left out).
    """
    if value is None:
        return "-"
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("utf-8", errors="backslashreplace")
        # backslashreplace already wrote "\xNN"; keep those backslashes as they are.
        out = [c if c == "\\" else _escape_char(c) for c in text[:limit]]
    else:
        text = value
        out = [_escape_char(c) for c in text[:limit]]
    rest = len(text) - limit
    return "".join(out) + (f"...(+{rest})" if rest > 0 else "")
