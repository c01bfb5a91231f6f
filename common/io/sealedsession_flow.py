"""Acknowledge the peer's stream bytes as the application consumes them (flow control).

The ``Session`` acknowledges bytes as they arrive. A receiver whose sink is slower than
the link (a process that reads its stdin slowly, a client that reads output slowly)
must then either hold without bound or stop reading the connection, which also stops
the ACKs its own output waits for: ``cat`` with a large input deadlocks. With
``SessionEndpoint(ack_on_consume=True)`` the endpoint rewrites the session's ACKs of
data streams down to what the application reported with ``consumed(ch, stream, n)``
and sends a fresh ACK when that grows. The peer's replay bound (BLOCK policy) then
bounds the bytes this end holds unconsumed, per stream, and nothing blocks the reader.

Exactly-once is untouched: RESUME still reports what arrived (the peer rewinds there;
the bytes between the consumed and the arrived offset are held here), and the peer's
OutStream takes a lower ACK than an earlier one as no news. EOF is acknowledged once
every byte before it is consumed. A channel that closed is acknowledged in full.

This belongs in the sans-IO ``Session`` (an ack limit per InStream); it lives here until
the core grows it, re-encoding only ACK records (one type byte checked per record).
"""

from __future__ import annotations

from collections.abc import Callable

from common.proto.session.messages import Ack, MsgType, Stream, decode, encode

__all__ = ["ConsumeAcks"]

_Key = tuple[int, Stream]
_ALL = 1 << 64


class ConsumeAcks:
    """Per data stream: bytes consumed, and the arrived offset/EOF the session acked."""

    def __init__(self) -> None:
        self._consumed: dict[_Key, int] = {}
        self._arrived: dict[_Key, tuple[int, bool]] = {}
        self._sent: dict[_Key, tuple[int, bool]] = {}
        self._due: dict[_Key, None] = {}

    def consumed(self, ch: int, stream: Stream, n: int) -> None:
        key = (ch, stream)
        self._consumed[key] = self._consumed.get(key, 0) + n
        if key in self._arrived:
            self._due[key] = None

    def forget(self, ch: int) -> None:
        """The channel closed: acknowledge everything that arrived."""
        for key in [k for k in self._arrived if k[0] == ch]:
            self._consumed[key] = _ALL
            self._due[key] = None

    def _ack(self, key: _Key) -> bytes | None:
        offset, eof = self._arrived[key]
        limit = min(offset, self._consumed.get(key, 0))
        ack = (limit, eof and limit == offset)
        if self._sent.get(key) == ack:
            return None
        self._sent[key] = ack
        if self._consumed.get(key) == _ALL and ack[1]:  # nothing more will come
            self._forget_key(key)
        return encode(Ack(key[0], key[1], ack[0], ack[1]))

    def _forget_key(self, key: _Key) -> None:
        self._consumed.pop(key, None)
        self._arrived.pop(key, None)
        self._sent.pop(key, None)

    @property
    def pending(self) -> bool:
        return bool(self._due)

    def due(self) -> list[bytes]:
        """ACKs for streams whose consumption grew since their last ACK."""
        out = []
        while self._due:
            key = next(iter(self._due))
            del self._due[key]
            if key in self._arrived and (record := self._ack(key)) is not None:
                out.append(record)
        return out

    def filter(self, record: bytes, known: Callable[[int], bool]) -> bytes | None:
        """A record of the session on its way out: an ACK of a data stream is held down to
        what was consumed (None: nothing new to say); everything else passes, as does the
        ACK of a channel the session has forgotten (``known(ch)`` False: its last ACK,
        again, after the first was lost)."""
        if not record or record[0] != MsgType.ACK:
            return record
        msg = decode(record)
        if not isinstance(msg, Ack) or msg.stream is Stream.CONTROL:
            return record
        key = (msg.ch, msg.stream)
        if not known(msg.ch):
            self._forget_key(key)
            self._due.pop(key, None)
            return record
        self._arrived[key] = (msg.offset, msg.eof)
        self._due.pop(key, None)
        return self._ack(key)

    def reset(self) -> None:
        """A new session: nothing of the old one counts."""
        for table in (self._consumed, self._arrived, self._sent, self._due):
            table.clear()
