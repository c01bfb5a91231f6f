"""One channel-stream's two ends: the sender's bounded replay buffer, the receiver's offset.

Every stream is a byte sequence numbered from offset 0 and ended by EOF at its length.
The sender keeps the bytes the receiver has not acknowledged, ``[base, end)``, and
transmits from ``cursor``; on a new connection the receiver reports what it has
(``rewind``) and the sender goes on from exactly there: no loss, no duplicate.

The replay bound (``limit`` bytes held) is enforced by one of two policies:

* ``BLOCK``: ``write`` takes only what fits; the caller must stop reading its source
  until an acknowledgement frees room (``blocked`` then turns back False and the
  session reports ``Writable``);
* ``DROP``: every write is taken and the oldest held bytes are dropped beyond the bound.
  A byte dropped after it was sent is lost only if the connection breaks before it
  arrives; whenever the receiver needs bytes below ``base``, the sender sends
  ``GAP(start, base)`` naming exactly that range, then carries on from ``base``.

The receiver (``InStream``) takes data only at its offset: anything below it is a
duplicate and trimmed, anything above it is a hole and a protocol error.

Flow control (a receive window per stream, h2-style). The receiver keeps two marks:
``offset``, what has *arrived*, and ``done``, what the application has *consumed*
(with auto-ack the two move together). ACK carries ``done`` (and EOF once everything
before it is consumed); RESUME carries ``offset``. The sender transmits only below
``acked + limit`` (``acked``: the peer's last ACK), under either policy, so the bytes
a receiver holds unconsumed on one stream never exceed the sender's replay bound, and
a stream nobody reads stops only itself, never the connection. On a new connection
the sender rewinds to the *arrived* offset (the receiver keeps its unconsumed bytes
across the cut: resending them would only be trimmed as duplicates, and a GAP could name
bytes the receiver holds) and frees its buffer to there, while its window stays
anchored at the *consumed* ACK: exactly once, and still bounded.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from common.proto.session.messages import ErrorCode, MessageError


class Policy(enum.Enum):
    BLOCK = "block"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class SendData:
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SendGap:
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class SendEof:
    offset: int


SendItem = SendData | SendGap | SendEof


class OutStream:
    """The sending end: a replay buffer bounded to ``limit`` bytes."""

    __slots__ = (
        "_buf",
        "acked",
        "base",
        "blocked",
        "cursor",
        "dropped",
        "end",
        "eof",
        "eof_acked",
        "eof_sent",
        "limit",
        "policy",
    )

    def __init__(self, limit: int, policy: Policy) -> None:
        if limit <= 0:
            raise ValueError("replay limit must be positive")
        self.limit = limit
        self.policy = policy
        self._buf = bytearray()  # the bytes [base, end)
        self.base = 0
        self.end = 0
        self.cursor = 0  # next offset to transmit on this connection
        self.acked = 0
        self.eof = False
        self.eof_sent = False
        self.eof_acked = False
        self.blocked = False  # a write was cut short by the bound
        self.dropped = 0

    @property
    def held(self) -> int:
        return self.end - self.base

    @property
    def done(self) -> bool:
        return self.eof_acked

    def room(self) -> int:
        """How many bytes ``write`` takes now."""
        if self.eof:
            return 0
        if self.policy is Policy.DROP:
            return self.limit
        return max(0, self.limit - self.held)

    def write(self, data: bytes) -> int:
        """Queue bytes; returns how many were taken (all of them under DROP)."""
        if self.eof:
            raise ValueError("write after EOF")
        n = len(data) if self.policy is Policy.DROP else min(len(data), self.room())
        if n < len(data):
            self.blocked = True
        if n:
            self._buf += data[:n]
            self.end += n
            if self.policy is Policy.DROP and self.held > self.limit:
                self._drop(self.held - self.limit)
        return n

    def _drop(self, k: int) -> None:
        del self._buf[:k]
        self.base += k
        self.dropped += k

    def write_eof(self) -> None:
        self.eof = True

    def unacked(self) -> bytes:
        """The bytes held for replay: written, not acknowledged (nor resumed past)."""
        return bytes(self._buf)

    def _check_mark(self, offset: int, eof: bool, what: str) -> None:
        if offset > self.end or (eof and not (self.eof and offset == self.end)):
            raise MessageError(
                ErrorCode.OFFSET, f"{what} of {offset}{' + EOF' if eof else ''} past {self.end}"
            )

    def _free(self, offset: int) -> None:
        if offset > self.base:
            del self._buf[: offset - self.base]
            self.base = offset

    def _woke(self) -> bool:
        if self.blocked and self.room() > 0:
            self.blocked = False
            return True
        return False

    def ack(self, offset: int, eof: bool) -> bool:
        """The receiver consumed everything below ``offset`` (and the EOF if ``eof``).

        A lower ACK than an earlier one is no news. Returns True if the stream was
        blocked and now has room again.
        """
        self._check_mark(offset, eof, "ack")
        if offset > self.acked:
            self.acked = offset
            self._free(offset)
        self.eof_acked = self.eof_acked or eof
        return self._woke()

    def rewind(self, offset: int, eof: bool) -> bool:
        """A new connection: the receiver *has* ``offset`` (and EOF if ``eof``), consumed or
        not; send from there. The window stays anchored at the last ACK."""
        if offset < self.acked:
            raise MessageError(ErrorCode.OFFSET, f"resume at {offset} below ack {self.acked}")
        self._check_mark(offset, eof, "resume")
        self._free(offset)
        self.cursor = offset
        self.eof_sent = eof
        self.eof_acked = self.eof_acked or eof  # the receiver holds it all: nothing to resend
        return self._woke()

    def pending(self) -> bool:
        """Something can go out now (a GAP, bytes inside the window, or the EOF)."""
        return self.cursor < self.base or self.cursor < self._window_end() or self._eof_next()

    def _window_end(self) -> int:
        """Bytes below this may be transmitted: the receiver's window."""
        return min(self.end, self.acked + self.limit)

    def _eof_next(self) -> bool:
        return self.eof and not self.eof_sent and self.cursor == self.end

    def next_item(self, max_bytes: int) -> SendItem | None:
        """The next thing to transmit on this connection, or None."""
        if self.cursor < self.base:
            gap = SendGap(self.cursor, self.base)
            self.cursor = self.base
            return gap
        stop = self._window_end()
        if self.cursor < stop:
            start = self.cursor - self.base
            chunk = bytes(self._buf[start : start + min(max_bytes, stop - self.cursor)])
            item = SendData(self.cursor, chunk)
            self.cursor += len(chunk)
            return item
        if self._eof_next():
            self.eof_sent = True
            return SendEof(self.end)
        return None


class InStream:
    """The receiving end: what has arrived (``offset``), what was consumed (``done``).

    Ranges a GAP skipped are consumed as soon as everything before them is.
    """

    __slots__ = ("_gaps", "ack_due", "done", "eof", "offset", "sent")

    def __init__(self) -> None:
        self.offset = 0
        self.eof = False
        self.done = 0
        self._gaps: deque[tuple[int, int]] = deque()  # skipped ranges inside [done, offset)
        self.ack_due = False
        self.sent: tuple[int, bool] = (0, False)  # the last ACK queued

    @property
    def held(self) -> int:
        """Bytes that arrived and are not consumed yet."""
        return self.offset - self.done - sum(end - start for start, end in self._gaps)

    @property
    def ack_mark(self) -> tuple[int, bool]:
        """What an ACK says now: consumed offset, and EOF once all before it is consumed."""
        return self.done, self.eof and self.done == self.offset

    def _mark_due(self) -> None:
        if self.ack_mark != self.sent:
            self.ack_due = True

    def _skip_gaps(self) -> None:
        while self._gaps and self._gaps[0][0] == self.done:
            self.done = self._gaps.popleft()[1]

    def consume(self, n: int) -> bool:
        """``n`` more bytes were used up (at most what is held); True if an ACK is due."""
        n = min(n, self.held)
        while n:
            stop = self._gaps[0][0] if self._gaps else self.offset
            step = min(n, stop - self.done)
            self.done += step
            n -= step
            self._skip_gaps()
        self._mark_due()
        return self.ack_due

    def consume_all(self) -> bool:
        self._gaps.clear()
        self.done = self.offset
        self._mark_due()
        return self.ack_due

    def _check(self, start: int, what: str) -> None:
        if start > self.offset:
            raise MessageError(ErrorCode.OFFSET, f"{what} at {start} skips from {self.offset}")

    def on_data(self, offset: int, data: bytes) -> bytes:
        """The new bytes of a DATA at ``offset`` (empty if all were had already)."""
        self._check(offset, "data")
        skip = self.offset - offset
        if skip >= len(data):
            return b""
        if self.eof:
            raise MessageError(ErrorCode.OFFSET, f"data past EOF at {self.offset}")
        fresh = data[skip:]
        self.offset += len(fresh)
        return fresh

    def on_eof(self, offset: int) -> bool:
        """True if this EOF is news (a repeated one asks for the ACK again)."""
        if offset != self.offset:
            raise MessageError(ErrorCode.OFFSET, f"EOF at {offset}, stream is at {self.offset}")
        if self.eof:
            self.ack_due = True
            return False
        self.eof = True
        self._mark_due()
        return True

    def on_gap(self, start: int, end: int) -> bool:
        """True if the range ``[start, end)`` is news (it is then skipped)."""
        if end <= self.offset:
            return False
        if start != self.offset or self.eof:
            raise MessageError(ErrorCode.OFFSET, f"gap [{start}, {end}) at {self.offset}")
        self._gaps.append((start, end))
        self.offset = end
        self._skip_gaps()
        self._mark_due()
        return True
