"""End-to-end resumable byte streams (sans-IO).

A *session* is one end of a relayed stream. Each direction is a byte sequence
numbered from offset 0. The sender keeps every byte the far end has not yet
acknowledged in a bounded replay buffer; the receiver acknowledges the offset it
has received. When the path between the two ends breaks and is replaced (a new
link, or a new route), the ends exchange the offsets they have received and each
resumes sending from the other's offset:

* the opener sends ``OPEN(resume, recv_offset)`` on the new path, the acceptor
  answers ``ACK(recv_offset)``; each calls ``resume(peer_recv_offset)``;
* if a needed byte was already discarded from the replay buffer (possible only
  with ``overflow="discard"``), ``resume`` raises ``GapError`` and the stream must
  end with an explicit GAP reset: bytes are never silently lost;
* a received DATA frame at an offset below ``recv_offset`` is trimmed (never
  delivered twice); one above it is a protocol error (never skip bytes);
* the receiver acknowledges (and reports on resume) only what its application
  has *handed on* (``hand_on``), not what merely arrived: a byte sitting in the
  receiver's memory when it dies is still in the sender's replay buffer.

When the far end lost the session altogether (it restarted), the sender
carries on in a new session that *continues* the old one
(``continuation_point``, then ``ResumeSession(..., send_start=, recv_start=)``
at the far end): offsets go on from where they were, so every byte the old far
end did not acknowledge is sent again and nothing is numbered twice.

Replay-buffer policy: with ``overflow="block"`` (default) ``write`` accepts only
what fits (the writer must wait for acknowledgements: back-pressure reaches the
source). With ``overflow="discard"`` every write is accepted and the oldest
unacknowledged bytes are dropped beyond the limit, so a source that cannot be
paused keeps running; if those bytes are then needed the stream ends with GAP.
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar, Literal

from common.proto.link.frames import ErrorCode

Overflow = Literal["block", "discard"]
Chunk = bytes | bytearray | memoryview


class ResumeError(Exception):
    """Base for session failures; the stream must be reset with ``code``."""

    code: ClassVar[ErrorCode] = ErrorCode.PROTOCOL


class GapError(ResumeError):
    """Bytes the peer still needs were discarded from the replay buffer."""

    code: ClassVar[ErrorCode] = ErrorCode.GAP


class ResumeProtocolError(ResumeError):
    """The peer's offsets are inconsistent with ours."""


class SessionClosedError(ResumeError):
    """Write after EOF."""


class ResumeSession:
    def __init__(
        self,
        replay_limit: int = 16 * 1024 * 1024,
        *,
        overflow: Overflow = "block",
        ack_every: int | None = None,
        send_start: int = 0,
        recv_start: int = 0,
    ) -> None:
        if replay_limit <= 0:
            raise ValueError("replay_limit must be positive")
        if overflow not in ("block", "discard"):
            raise ValueError("overflow must be 'block' or 'discard'")
        self.replay_limit = replay_limit
        self.overflow: Overflow = overflow
        self.ack_every = (
            ack_every if ack_every is not None else max(1, min(replay_limit // 4, 1 << 20))
        )
        # send direction: buffered bytes are [_base, _end); _sent then _unsent
        if send_start < 0 or recv_start < 0:
            raise ValueError("start offsets must not be negative")
        self._sent: deque[Chunk] = deque()
        self._unsent: deque[Chunk] = deque()
        self._acked = send_start  # highest offset the peer acknowledged
        self._base = send_start  # first offset still held (== _acked unless discarded)
        self._cursor = send_start  # next offset to transmit (== _base + len(_sent bytes))
        self._end = send_start  # bytes written by the application (from offset 0)
        self._max_sent = send_start  # highest offset ever transmitted
        self._attached = False
        self._eof_written = False
        self._eof_sent = False  # on the current attachment
        self._eof_ever_sent = False  # on any: the peer may hold it (and acknowledge it)
        self._eof_acked = False
        self.discarded = 0  # bytes dropped by overflow="discard"
        self._gap: int | None = None  # first offset discarded before it was sent
        # receive direction
        self.recv_offset = recv_start
        self.handed = recv_start  # bytes the application has handed on (<= recv_offset)
        self._floor = recv_start  # where the peer's session started (it holds nothing before)
        self._ack_sent = recv_start
        self._eof_received = False
        self._fin_ack_sent = False

    # ---------------------------------------------------------------- state
    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def acked(self) -> int:
        return self._acked

    @property
    def written(self) -> int:
        return self._end

    @property
    def buffered(self) -> int:
        """Bytes held in the replay buffer."""
        return self._end - self._base

    @property
    def eof_written(self) -> bool:
        return self._eof_written

    @property
    def eof_acked(self) -> bool:
        return self._eof_acked

    @property
    def eof_received(self) -> bool:
        return self._eof_received

    @property
    def done(self) -> bool:
        """Both directions finished and our EOF acknowledged."""
        return self._eof_acked and self._eof_received

    # ---------------------------------------------------------------- send side
    def room(self) -> int:
        """How many bytes ``write`` accepts now."""
        if self._eof_written:
            return 0
        if self.overflow == "discard":
            return self.replay_limit
        return max(0, self.replay_limit - (self._end - self._base))

    def write(self, data: Chunk) -> int:
        """Queue application bytes; returns how many were taken."""
        if self._eof_written:
            raise SessionClosedError("write after EOF")
        n = len(data)
        if n == 0:
            return 0
        if self.overflow == "block":
            n = min(n, self.replay_limit - (self._end - self._base))
            if n <= 0:
                return 0
            if n < len(data):
                data = memoryview(data)[:n]
        self._unsent.append(data)
        self._end += n
        if self.overflow == "discard":
            self._discard_over_limit()
        return n

    def _discard_over_limit(self) -> None:
        excess = (self._end - self._base) - self.replay_limit
        while excess > 0:
            q = self._sent if self._sent else self._unsent
            head = q[0]
            if len(head) <= excess:
                q.popleft()
                k = len(head)
            else:
                q[0] = memoryview(head)[excess:]
                k = excess
            if q is self._unsent:
                self._cursor += k
                if self._gap is None:
                    self._gap = self._base  # never sent: the peer will need them
            self._base += k
            self.discarded += k
            excess -= k

    def write_eof(self) -> None:
        self._eof_written = True

    def has_pending(self) -> bool:
        """Something to transmit on the current attachment (data or EOF)."""
        if not self._attached:
            return False
        return bool(self._unsent) or (self._eof_written and not self._eof_sent)

    def next_chunk(self, max_bytes: int) -> tuple[int, Chunk] | None:
        """The next (offset, bytes) to transmit, at most ``max_bytes``; None if nothing."""
        if not self._attached or not self._unsent or max_bytes <= 0:
            return None
        if self._gap is not None:
            raise GapError(f"bytes from offset {self._gap} were discarded before they were sent")
        head = self._unsent[0]
        if len(head) > max_bytes:
            mv = memoryview(head)
            chunk: Chunk = mv[:max_bytes]
            self._unsent[0] = mv[max_bytes:]
        else:
            chunk = self._unsent.popleft()
        off = self._cursor
        self._sent.append(chunk)
        self._cursor += len(chunk)
        self._max_sent = max(self._max_sent, self._cursor)
        return off, chunk

    def take_eof(self) -> int | None:
        """If the EOF is due on this attachment, mark it sent and return its offset."""
        if self._gap is not None and self._attached:
            raise GapError(f"bytes from offset {self._gap} were discarded before they were sent")
        if (
            self._attached
            and self._eof_written
            and not self._eof_sent
            and not self._unsent
            and self._cursor == self._end
        ):
            self._eof_sent = self._eof_ever_sent = True
            return self._end
        return None

    def on_ack(self, offset: int, fin: bool = False) -> int:
        """The peer received everything below ``offset``; returns bytes freed."""
        # (an EOF sent on an earlier attachment may be acknowledged before it is sent
        # again: the peer held bytes when the path changed and handed them on since)
        if offset > self._max_sent or (fin and (not self._eof_ever_sent or offset != self._end)):
            raise ResumeProtocolError(
                f"peer acknowledged offset {offset}{' + EOF' if fin else ''} "
                f"beyond what was sent ({self._max_sent})"
            )
        if fin:
            self._eof_acked = self._eof_sent = True
        if offset <= self._acked:
            return 0
        self._acked = offset
        return self._trim_to(offset)

    def _trim_to(self, offset: int) -> int:
        freed = 0
        while self._base < offset:
            q = self._sent if self._sent else self._unsent
            if not q:
                break
            head = q[0]
            k = offset - self._base
            if len(head) <= k:
                q.popleft()
                k = len(head)
            else:
                q[0] = memoryview(head)[k:]
            if q is self._unsent:
                self._cursor += k
            self._base += k
            freed += k
        return freed

    def detach(self) -> None:
        """The path went away; nothing more can be sent until ``resume``."""
        self._attached = False

    def resume(self, peer_recv_offset: int, peer_fin: bool = False) -> None:
        """Attach a new path: the peer has received ``peer_recv_offset`` bytes."""
        if peer_recv_offset > self._max_sent or peer_recv_offset > self._end:
            raise ResumeProtocolError(
                f"peer claims offset {peer_recv_offset}, only {self._max_sent} were ever sent"
            )
        if peer_fin and not (self._eof_written and peer_recv_offset == self._end):
            raise ResumeProtocolError("peer claims our EOF before we wrote it")
        if peer_recv_offset < self._base:
            raise GapError(
                f"peer resumes at {peer_recv_offset} but the replay buffer starts at {self._base}"
            )
        if peer_recv_offset > self._acked:
            self._acked = peer_recv_offset
        # everything not acknowledged goes back to "unsent", then trim to the peer's offset
        self._sent.extend(self._unsent)
        self._unsent = self._sent
        self._sent = deque()
        self._cursor = self._base
        self._trim_to(peer_recv_offset)
        self._cursor = peer_recv_offset
        self._gap = None
        self._eof_sent = peer_fin
        if peer_fin:
            self._eof_acked = self._eof_ever_sent = True
        self._attached = True

    def start(self) -> None:
        """Attach the first path of a new session (nothing sent, nothing received)."""
        self.resume(0)

    # ---------------------------------------------------------------- receive side
    def on_data(self, offset: int, payload: Chunk) -> Chunk:
        """Bytes arrived at ``offset``; returns the new bytes to deliver (maybe empty)."""
        n = len(payload)
        if offset > self.recv_offset:
            raise ResumeProtocolError(
                f"data at offset {offset} but only {self.recv_offset} received: bytes skipped"
            )
        skip = self.recv_offset - offset
        if skip >= n:
            return b""  # a duplicate (replayed from what we handed on): drop it
        if self._eof_received:
            raise ResumeProtocolError("data after EOF")
        new = memoryview(payload)[skip:] if skip else payload
        self.recv_offset += n - skip
        return new

    def on_direct(self, offset: int, n: int) -> None:
        """``n`` new bytes at ``offset`` went straight downstream: received and handed
        on at once (only when nothing else is held, and before any EOF)."""
        if offset != self.recv_offset or self.handed != offset or self._eof_received:
            raise ResumeProtocolError(f"bytes at {offset} cannot go straight on")
        self.recv_offset += n
        self.handed += n

    def on_eof(self, offset: int) -> bool:
        """The peer's EOF at ``offset``; returns True the first time."""
        if offset != self.recv_offset:
            raise ResumeProtocolError(f"EOF at {offset} but {self.recv_offset} bytes received")
        first = not self._eof_received
        self._eof_received = True
        self._fin_ack_sent = False  # (re)acknowledge it, also when it was replayed
        return first

    def hand_on(self, n: int) -> None:
        """The application handed ``n`` more received bytes on (wrote them downstream)."""
        if n < 0 or self.handed + n > self.recv_offset:
            raise ValueError(f"cannot hand on {n} bytes: {self.recv_offset - self.handed} held")
        self.handed += n

    def _fin_handed(self) -> bool:
        return self._eof_received and self.handed == self.recv_offset

    def ack_due(self, force: bool = False) -> tuple[int, bool] | None:
        """(offset, fin) to acknowledge now, or None; marks it acknowledged.

        Only bytes handed on are acknowledged, and the EOF once all are."""
        fin = self._fin_handed()
        fin_due = fin and not self._fin_ack_sent
        pending = self.handed - self._ack_sent
        if fin_due or pending >= self.ack_every or (force and pending > 0):
            self._ack_sent = self.handed
            if fin:
                self._fin_ack_sent = True
            return self.handed, fin
        return None

    def resume_point(self) -> tuple[int, bool]:
        """What we report on a resumed path: (offset handed on, EOF handed on).

        The peer sends again from there; what we hold beyond it is trimmed as it
        arrives (``on_data``), so nothing is delivered twice."""
        fin = self._fin_handed()
        self._ack_sent = self.handed
        self._fin_ack_sent = fin
        # bytes held from before a continuation are ours: the new peer never had them
        return max(self.handed, self._floor), fin

    def continuation_point(self) -> tuple[int, int]:
        """The far end lost this session: (send_start, recv_start) for a new one.

        The new session sends again every byte not acknowledged (from ``acked``)
        and expects the far end's bytes from ``recv_offset`` (what we hold
        beyond ``handed`` is still ours to hand on). Raises GapError when
        unacknowledged bytes were already discarded (``overflow="discard"``)."""
        if self._base > self._acked:
            raise GapError(
                f"bytes {self._acked}..{self._base} were discarded before the peer had them"
            )
        self._floor = self.recv_offset
        return self._acked, self.recv_offset
