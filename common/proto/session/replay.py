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
"""

from __future__ import annotations

import enum
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

    def ack(self, offset: int, eof: bool) -> bool:
        """The receiver has everything below ``offset`` (and the EOF if ``eof``).

        Returns True if the stream was blocked and now has room again.
        """
        if offset > self.end or (eof and not (self.eof and offset == self.end)):
            raise MessageError(
                ErrorCode.OFFSET, f"ack of {offset}{' + EOF' if eof else ''} past {self.end}"
            )
        if offset > self.acked:
            self.acked = offset
            if offset > self.base:
                del self._buf[: offset - self.base]
                self.base = offset
        self.eof_acked = self.eof_acked or eof
        if self.blocked and self.room() > 0:
            self.blocked = False
            return True
        return False

    def rewind(self, offset: int, eof: bool) -> bool:
        """A new connection: the receiver has ``offset`` (and EOF if ``eof``); send from there."""
        if offset < self.acked:
            raise MessageError(ErrorCode.OFFSET, f"resume at {offset} below ack {self.acked}")
        woke = self.ack(offset, eof)
        self.cursor = offset
        self.eof_sent = eof
        return woke

    def pending(self) -> bool:
        return self.cursor < self.end or (self.eof and not self.eof_sent)

    def next_item(self, max_bytes: int) -> SendItem | None:
        """The next thing to transmit on this connection, or None."""
        if self.cursor < self.base:
            gap = SendGap(self.cursor, self.base)
            self.cursor = self.base
            return gap
        if self.cursor < self.end:
            start = self.cursor - self.base
            chunk = bytes(self._buf[start : start + max_bytes])
            item = SendData(self.cursor, chunk)
            self.cursor += len(chunk)
            return item
        if self.eof and not self.eof_sent:
            self.eof_sent = True
            return SendEof(self.end)
        return None


class InStream:
    """The receiving end: what has arrived in order, and whether an ACK is owed."""

    __slots__ = ("ack_due", "eof", "offset")

    def __init__(self) -> None:
        self.offset = 0
        self.eof = False
        self.ack_due = False

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
        self.ack_due = True
        return fresh

    def on_eof(self, offset: int) -> bool:
        """True if this EOF is news."""
        if offset != self.offset:
            raise MessageError(ErrorCode.OFFSET, f"EOF at {offset}, stream is at {self.offset}")
        self.ack_due = True
        if self.eof:
            return False
        self.eof = True
        return True

    def on_gap(self, start: int, end: int) -> bool:
        """True if the range ``[start, end)`` is news (it is then skipped)."""
        if end <= self.offset:
            return False
        if start != self.offset or self.eof:
            raise MessageError(ErrorCode.OFFSET, f"gap [{start}, {end}) at {self.offset}")
        self.offset = end
        self.ack_due = True
        return True
