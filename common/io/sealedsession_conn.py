"""One connection of a ``SessionEndpoint``: a ``SecureChannel`` over one trio stream.

Two tasks share the connection: the reader feeds what it reads to the sealed transport
and the records it opens to the ``Session``; the writer (the only task that writes the
stream) flushes the transport's handshake bytes and, once the connection is sealed,
drains the session in batches of ``BATCH_RECORDS`` records, one ``send_all`` per batch,
so no more than one batch is ever held in memory.

A connection first proves the secret on its own (``authenticate``: the handshake,
touching no session), and only then may it take the session (``run_one``): a stream
that cannot authenticate never cuts the connection that carries the session now.

The connection ends at the first of: the transport's ``Refused`` (its ALERT is written,
best effort), the session's ``ProtocolError``, the end of the stream, a stream error,
the handshake timeout, cancellation. ``ConnectionEnd`` says which, for the one log line
the endpoint writes and for the caller's back-off.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from common.proto.session import channels as chs
from common.proto.session.secure import Established, Record, Refused, SecureChannel, State
from common.proto.session.session import Session

__all__ = [
    "BATCH_RECORDS",
    "RECEIVE_SIZE",
    "ConnectionEnd",
    "EndKind",
    "Liveness",
    "Sealed",
    "authenticate",
    "run_one",
]

BATCH_RECORDS = 16  # records sealed per send_all: at most ~1 MiB in flight per connection
RECEIVE_SIZE = 64 * 1024 + 64  # one whole record frame per read at most
ALERT_TIMEOUT = 1.0  # seconds to write the ALERT of a refusal before closing anyway


class EndKind(enum.Enum):
    REFUSED = "refused"  # the sealed transport refused (wrong secret, tampered record...)
    PROTOCOL = "protocol"  # the session layer refused a record
    EOF = "eof"  # the peer closed the stream
    STREAM_ERROR = "stream-error"  # the stream broke (reset, closed under us)
    TIMEOUT = "timeout"  # no handshake within the timeout
    REPLACED = "replaced"  # a newer connection took over, or the session was replaced
    NO_SECRET = "no-secret"  # the secrets source had none: nothing was sent


@dataclass(frozen=True, slots=True)
class ConnectionEnd:
    """How a connection ended; ``established``: it carried the session at some point."""

    kind: EndKind
    reason: str
    established: bool
    code: int | None = None  # SecureError or ErrorCode, when there is one


class SessionEndpoint(Protocol):
    """What a connection needs of its endpoint (``sealedsession.SessionEndpoint``)."""

    @property
    def session(self) -> Session: ...

    def _set_writer(self, wake: Callable[[], None] | None) -> None: ...

    def _connected(self, event: Established) -> None: ...

    def _deliver(self, event: chs.Event) -> None: ...

    async def _room_for_events(self) -> None: ...

    def _after_receive(self) -> None: ...

    def _outgoing(self, max_records: int) -> tuple[list[bytes], bool]: ...


@dataclass(frozen=True, slots=True)
class Liveness:
    """Keepalives for a stream that cannot tell its end (a serial line): after
    ``keepalive`` seconds without writing, an empty sealed record goes out (the peer's
    adapter drops it before the session); after ``idle_timeout`` seconds with nothing
    read, an established connection ends (TIMEOUT) and a new one starts, so a peer that
    restarted behind a line that stays up is found. Both ends should use it; the idle
    timeout must be well above the peer's keepalive interval."""

    keepalive: float = 10.0
    idle_timeout: float = 35.0


@dataclass(frozen=True, slots=True)
class Sealed:
    """A connection whose handshake completed: ``pending`` came in the same read."""

    established: Established
    pending: tuple[Established | Record | Refused, ...]


_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


async def authenticate(
    stream: trio.abc.Stream, channel: SecureChannel, *, handshake_timeout: float
) -> Sealed | ConnectionEnd:
    """Run the handshake alone (no session is touched): ``Sealed`` once both ends
    proved the secret, else how the connection ended."""
    with trio.move_on_after(handshake_timeout):
        while True:
            try:
                out = channel.data_to_send()
                if out:
                    await stream.send_all(out)
                data = await stream.receive_some(RECEIVE_SIZE)
            except _STREAM_ERRORS as e:
                return ConnectionEnd(EndKind.STREAM_ERROR, f"{type(e).__name__}: {e}", False)
            events = channel.receive_data(data) if data else channel.receive_eof()
            for i, event in enumerate(events):
                if isinstance(event, Refused):
                    with trio.move_on_after(ALERT_TIMEOUT):  # its ALERT, best effort
                        try:
                            await stream.send_all(channel.data_to_send())
                        except _STREAM_ERRORS:
                            pass
                    return ConnectionEnd(EndKind.REFUSED, event.reason, False, int(event.code))
                if isinstance(event, Established):
                    return Sealed(event, tuple(events[i + 1 :]))
            if not data:
                return ConnectionEnd(EndKind.EOF, "the peer closed the stream", False)
    return ConnectionEnd(EndKind.TIMEOUT, f"no handshake within {handshake_timeout:g}s", False)


class _Stop(Exception):
    def __init__(self, end: ConnectionEnd) -> None:
        super().__init__(end.reason)
        self.end = end


class _Connection:
    def __init__(
        self,
        endpoint: SessionEndpoint,
        stream: trio.abc.Stream,
        channel: SecureChannel,
        liveness: Liveness | None,
    ) -> None:
        self.ep = endpoint
        self.keepalive = math.inf if liveness is None else liveness.keepalive
        self.idle_timeout = math.inf if liveness is None else liveness.idle_timeout
        self.session = endpoint.session  # this connection's, even if the endpoint's changes
        self.stream = stream
        self.sc = channel
        self.established = False
        self.stopping = False
        self.kick = trio.Event()
        self.writer_done = trio.Event()
        self.writer_error: str | None = None

    # ------------------------------------------------------------ writer
    def wake(self) -> None:
        self.kick.set()

    async def writer(self) -> None:
        try:
            while True:
                self.kick = trio.Event()
                await self._flush()
                if self.stopping:
                    return
                with trio.move_on_after(self.keepalive):
                    await self.kick.wait()
                if not self.kick.is_set() and self.sc.state is State.ESTABLISHED:
                    self.sc.send_record(b"")  # a keepalive: nothing written for a while
        finally:
            self.writer_done.set()

    async def _flush(self) -> None:
        while True:
            more = False
            # the reader may have closed the transport (EOF) while we were sending
            if self.sc.state is State.ESTABLISHED and not self.stopping:
                records, more = self.ep._outgoing(BATCH_RECORDS)
                for record in records:
                    self.sc.send_record(record)
            out = self.sc.data_to_send()
            if out:
                await self.stream.send_all(out)
            elif not more:
                return

    # ------------------------------------------------------------ reader
    async def reader(self, sealed: Sealed) -> ConnectionEnd:
        try:
            for first in (sealed.established, *sealed.pending):
                await self._on_secure(first)
        except _Stop as stop:
            return stop.end
        self.wake()
        while True:
            idle = self.idle_timeout if self.established else math.inf
            data: bytes | bytearray = b""
            with trio.move_on_after(idle) as quiet:
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except _STREAM_ERRORS as e:
                    return self._end(EndKind.STREAM_ERROR, f"{type(e).__name__}: {e}")
            if quiet.cancelled_caught:
                return self._end(EndKind.TIMEOUT, f"nothing received for {idle:g}s")
            events = self.sc.receive_data(data) if data else self.sc.receive_eof()
            try:
                for event in events:
                    await self._on_secure(event)
            except _Stop as stop:
                return stop.end
            if not data:
                return self._end(EndKind.EOF, "the peer closed the stream")
            self.ep._after_receive()
            self.wake()

    def _end(self, kind: EndKind, reason: str, code: int | None = None) -> ConnectionEnd:
        return ConnectionEnd(kind, reason, self.established, code)

    async def _on_secure(self, event: Established | Record | Refused) -> None:
        if isinstance(event, Refused):
            await self._send_alert()
            raise _Stop(self._end(EndKind.REFUSED, event.reason, int(event.code)))
        if isinstance(event, Established):
            self.established = True
            self.session.connection_up(trio.current_time())
            self.ep._connected(event)
            self.wake()
            return
        if not event.payload:
            return  # a keepalive (the session never sends an empty record)
        for ev in self.session.receive_record(event.payload, trio.current_time()):
            if isinstance(ev, chs.ProtocolError):
                self.ep._deliver(ev)
                raise _Stop(self._end(EndKind.PROTOCOL, ev.detail, int(ev.code)))
            self.ep._deliver(ev)
        await self.ep._room_for_events()

    async def _send_alert(self) -> None:
        """Write what the transport still holds (its ALERT) through the writer, bounded."""
        self.stopping = True
        self.wake()
        with trio.move_on_after(ALERT_TIMEOUT):
            await self.writer_done.wait()


async def run_one(
    endpoint: SessionEndpoint,
    stream: trio.abc.Stream,
    channel: SecureChannel,
    sealed: Sealed,
    *,
    liveness: Liveness | None = None,
) -> ConnectionEnd:
    """Carry the endpoint's session over ``stream``, sealed by ``authenticate``, until
    the connection ends.

    Cancellation from outside propagates (after ``connection_down``); the caller closes
    the stream.
    """
    conn = _Connection(endpoint, stream, channel, liveness)
    endpoint._set_writer(conn.wake)
    end: ConnectionEnd | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_writer_guard, conn, nursery.cancel_scope)
            end = await conn.reader(sealed)
            nursery.cancel_scope.cancel()
    finally:
        endpoint._set_writer(None)
        if conn.established:
            conn.session.connection_down()
    if end is not None:
        return end
    return conn._end(EndKind.STREAM_ERROR, conn.writer_error or "the writer stopped")


async def _writer_guard(conn: _Connection, cancel: trio.CancelScope) -> None:
    """The writer; a stream error while writing ends the connection like one on reading."""
    try:
        await conn.writer()
    except _STREAM_ERRORS as e:
        conn.writer_error = f"{type(e).__name__}: {e}"
        if not conn.stopping:  # else the reader is ending already, with the real reason
            cancel.cancel()
