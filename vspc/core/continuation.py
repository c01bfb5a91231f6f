"""Where each relayed stream stands, so a connection that continues it fits on exactly.

A relay between the VM and the appliance may die and restart; the relay before
it then carries the stream on in a new connection whose origin header (version
2) says where it starts: ``offset`` (VM to appliance: the stream offset of its
first byte) and ``received`` (appliance to VM: how much the VM's end has). The
appliance knows how far each stream got on its side, so it

* skips the bytes it already has (``skip``): nothing is delivered twice;
* sends the VM again what it sent but the VM never received, from a short tail
  of what it sent (``resend``, to be sent, and counted by ``sent_out``, first);
* and names what neither side has any more (``missing_in``, ``missing_out``)
  so the caller logs and counts the gap; it is never silent.

An appliance that restarted has no ledger; for streams that end in it (peer
links, acknowledged only once logged) each connection's ``connect`` event in
the console's event log records the stream offset its first logged byte has
and the log file's size then. If the last ``connect`` of that console is the
stream's own, the log file's size now says how much of the stream it holds
(``recovered_have``), and the continuation fits on exactly after a restart too.

Sans-IO: byte counts in, decisions out. Streams are keyed by the origin host and
the stream id the ingress relay gave them; the ledger remembers a bounded number
(least recently used go first), live or ended, since a continuation comes after
the old connection ended.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

StreamKey = tuple[str, str]  # (origin host, stream id)


@dataclass(frozen=True, slots=True)
class Continuation:
    known: bool  # the ledger had the stream (False: e.g. the appliance restarted)
    skip: int  # bytes at the start of the new connection the appliance already has
    missing_in: tuple[int, int] | None  # (offset, length) VM to appliance nobody has
    resend: bytes  # appliance to VM: send these first, the VM never had them
    missing_out: tuple[int, int] | None  # (offset, length) appliance to VM nobody has


class StreamCursor:
    """One stream's position on the appliance: bytes in, bytes out, tail of the out."""

    __slots__ = ("_keep", "_skip", "_tail", "received", "sent")

    def __init__(self, keep: int, received: int = 0, sent: int = 0) -> None:
        self._keep = keep
        self._skip = 0
        self._tail = bytearray()  # the last ``keep`` bytes sent to the VM
        self.received = received  # stream offset (VM to appliance) the appliance has
        self.sent = sent  # stream offset (appliance to VM) the appliance sent

    def take(self, data: bytes) -> bytes:
        """Bytes arrived from the VM; returns those the appliance does not have yet."""
        if self._skip:
            k = min(self._skip, len(data))
            self._skip -= k
            data = data[k:]
        self.received += len(data)
        return data

    def sent_out(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes were written towards the VM."""
        n = len(data)
        self.sent += n
        if self._keep:
            self._tail += data[-self._keep :] if n > self._keep else data
            excess = len(self._tail) - self._keep
            if excess > 0:
                del self._tail[:excess]

    def _continue(self, offset: int, received: int) -> Continuation:
        missing_in = None
        if offset > self.received:  # bytes the old path acknowledged but never handed over
            missing_in = (self.received, offset - self.received)
            self.received = offset
        self._skip = self.received - offset
        resend = b""
        missing_out = None
        behind = self.sent - received
        if behind > 0:
            kept = min(behind, len(self._tail))
            resend = bytes(self._tail[len(self._tail) - kept :])
            del self._tail[len(self._tail) - kept :]  # sent again (``sent_out``) from here
            if kept < behind:
                missing_out = (received, behind - kept)
        # from here on, count in the VM's numbering (a lost range takes no offsets there)
        self.sent = received
        return Continuation(True, self._skip, missing_in, resend, missing_out)


class StreamLedger:
    def __init__(self, max_streams: int = 1024, keep: int = 64 * 1024) -> None:
        if max_streams < 1 or keep < 0:
            raise ValueError("max_streams must be >= 1 and keep >= 0")
        self.max_streams = max_streams
        self.keep = keep
        self._streams: OrderedDict[StreamKey, StreamCursor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, key: StreamKey) -> bool:
        return key in self._streams

    def begin(
        self,
        key: StreamKey,
        offset: int = 0,
        received: int = 0,
        *,
        continues: bool = False,
        have: int | None = None,
    ) -> tuple[StreamCursor, Continuation]:
        """A connection of stream ``key`` starts; ``continues`` when its header says so.
        ``have``: for a stream not in the ledger, what the console log holds of it."""
        cur = self._streams.pop(key, None) if continues else None
        if cur is None and continues and have is not None:
            cur = StreamCursor(self.keep, have, received)  # what was sent is not known
        if cur is None:
            cur = StreamCursor(self.keep, offset, received)
            plan = Continuation(False, 0, None, b"", None)
        else:
            plan = cur._continue(offset, received)
        self._streams[key] = cur
        while len(self._streams) > self.max_streams:
            self._streams.popitem(last=False)
        return cur, plan


def recovered_have(event_lines: list[bytes], key: StreamKey, size_now: int) -> int | None:
    """How many bytes of stream ``key`` the console log holds, from its event log
    (oldest line first) and the log file's size now; None when it cannot be told
    (another stream connected since, the file was rotated, no such event)."""
    for raw in reversed(event_lines):
        try:
            ev = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(ev, dict) or ev.get("event") != "connect":
            continue
        offset, size = ev.get("offset"), ev.get("log_size")
        if (
            (ev.get("host"), ev.get("stream")) != key
            or not isinstance(offset, int)
            or not isinstance(size, int)
            or size_now < size
        ):
            return None
        return offset + (size_now - size)
    return None
