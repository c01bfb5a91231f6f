"""Container output as timestamped lines: the framer and the record format (sans-IO).

``LineFramer`` takes one stream's bytes with the time they arrived (``now``,
seconds since the epoch, passed in) and gives back complete ``LogLine`` records.
A line is stamped with the time its last byte arrived (as docker does), so
records of several streams, appended in arrival order, are in time order.

* A line without its newline yet is held, at most ``max_line`` bytes of it: a
  longer line is cut into ``max_line``-byte records flagged partial (docker cuts
  at 16 KiB), so the held bytes per stream stay bounded.
* ``eof`` gives back what is held as a partial record; the framer is then closed.
* The records do not depend on how the bytes were chunked (only their times do).

Record format (one per line in the files; the CRI log format kubelet reads)::

    <RFC3339Nano UTC time> <stream> <P|F> <text>\\n
    2026-12-07T15:20:01.123456789Z stdout F hello

``F``: the text was followed by a newline in the stream; ``P``: it was not (a
line cut at ``max_line``, or the end of the stream without a newline).
Concatenating the texts, each ``F`` followed by ``\\n``, gives back the stream's
bytes exactly. The text is the raw bytes (any byte but ``\\n``).
"""

from __future__ import annotations

import datetime as _dt
import enum
import functools
from dataclasses import dataclass

MAX_LINE = 16 * 1024
NS = 1_000_000_000
TIME_LEN = len("2026-12-07T15:20:01.123456789Z")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


class Stream(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


STREAMS: frozenset[Stream] = frozenset(Stream)


class FramerState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class LineLogError(ValueError):
    """A misuse of the framer or an unreadable record; ``code`` names which."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


@dataclass(frozen=True, slots=True)
class LogLine:
    ns: int  # nanoseconds since the epoch
    stream: Stream
    partial: bool  # no newline ended this text in the stream
    text: bytes

    @property
    def time(self) -> float:
        return self.ns / NS

    def record(self) -> bytes:
        """The line as stored: ``<time> <stream> <P|F> <text>\\n``."""
        flag = b"P" if self.partial else b"F"
        return b"%s %s %s %s\n" % (
            rfc3339nano(self.ns).encode(),
            self.stream.encode(),
            flag,
            self.text,
        )

    def render(self, timestamps: bool = False) -> bytes:
        """As docker and kubelet show it: the text, its newline unless partial,
        with ``--timestamps`` the RFC3339Nano time and a space before it."""
        end = b"" if self.partial else b"\n"
        if timestamps:
            return b"%s %s%s" % (rfc3339nano(self.ns).encode(), self.text, end)
        return self.text + end


def to_ns(now: float) -> int:
    return round(now * NS)


def rfc3339nano(ns: int) -> str:
    """``2026-12-07T15:20:01.123456789Z`` (always nine digits: fixed width)."""
    secs, frac = divmod(ns, NS)
    return f"{_stamp(secs)}.{frac:09d}Z"


@functools.lru_cache(maxsize=64)
def _stamp(secs: int) -> str:
    return f"{_EPOCH + _dt.timedelta(seconds=secs):%Y-%m-%dT%H:%M:%S}"


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch of an RFC3339Nano UTC time (as ``rfc3339nano`` writes)."""
    if len(text) != TIME_LEN or text[19] != "." or text[-1] != "Z":
        raise LineLogError("bad-time", repr(text[:40]))
    try:
        return _seconds(text[:19]) * NS + int(text[20:29])
    except ValueError as e:
        raise LineLogError("bad-time", repr(text[:40])) from e


@functools.lru_cache(maxsize=256)
def _seconds(text: str) -> int:
    """Seconds since the epoch of ``YYYY-MM-DDTHH:MM:SS`` (UTC); lines read in a
    row mostly share it, hence the cache."""
    delta = _dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=_dt.UTC) - _EPOCH
    return delta.days * 86400 + delta.seconds


def parse_record(raw: bytes) -> LogLine:
    """One stored record (with or without its newline); LineLogError if malformed
    (a line torn by a crash, say)."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    head = raw[: TIME_LEN + 10]
    parts = head.split(b" ", 3)
    if len(parts) < 3:
        raise LineLogError("bad-record", repr(raw[:60]))
    try:
        stream = Stream(parts[1].decode("ascii"))
        ns = parse_time(parts[0].decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise LineLogError("bad-record", repr(raw[:60])) from e
    if parts[2] not in (b"P", b"F") or (len(parts) == 3 and len(raw) != len(head)):
        raise LineLogError("bad-record", repr(raw[:60]))
    start = len(parts[0]) + len(parts[1]) + len(parts[2]) + 3
    return LogLine(ns, stream, parts[2] == b"P", raw[start:])


class LineFramer:
    """One stream's bytes -> ``LogLine`` records (see the module doc)."""

    __slots__ = ("_buf", "max_line", "state", "stream")

    def __init__(self, stream: Stream, max_line: int = MAX_LINE) -> None:
        if max_line < 1:
            raise LineLogError("bad-max-line", str(max_line))
        self.stream = stream
        self.max_line = max_line
        self.state = FramerState.OPEN
        self._buf = bytearray()

    @property
    def held(self) -> int:
        """Bytes of an unfinished line held (at most ``max_line``)."""
        return len(self._buf)

    def feed(self, data: bytes, now: float) -> list[LogLine]:
        if self.state is not FramerState.OPEN:
            raise LineLogError("framer-closed", f"{self.stream} data after its end")
        if not data:
            return []
        ns = to_ns(now)
        buf = self._buf
        buf += data
        out: list[LogLine] = []
        pos, cap = 0, self.max_line
        while True:
            i = buf.find(b"\n", pos, pos + cap + 1)
            if i >= 0:
                out.append(LogLine(ns, self.stream, False, bytes(buf[pos:i])))
                pos = i + 1
            elif len(buf) - pos > cap:  # byte ``cap`` is no newline: cut here
                out.append(LogLine(ns, self.stream, True, bytes(buf[pos : pos + cap])))
                pos += cap
            else:
                break
        del buf[:pos]
        return out

    def eof(self, now: float) -> list[LogLine]:
        """The end of the stream: what is held, as a partial record; the framer closes."""
        if self.state is FramerState.CLOSED:
            return []
        self.state = FramerState.CLOSED
        rest, self._buf = bytes(self._buf), bytearray()
        return [LogLine(to_ns(now), self.stream, True, rest)] if rest else []
