"""``SessionEndpoint``: one VM's ``Session`` carried over a succession of sealed connections.

Both ends use it: the appliance (``Role.APPLIANCE``, the sealed transport's initiator)
and the tether (``Role.TETHER``, the responder). The endpoint outlives connections; its
owner hands it one byte stream at a time::

    endpoint = SessionEndpoint(Role.TETHER, Session(Role.TETHER), read_secrets)
    while True:
        stream = await connect()
        end = await endpoint.run_connection(stream, handshake_timeout=10)
        ...back off (``end.established`` says whether it ever carried the session)

``run_connection`` runs one ``SecureChannel`` over the stream (the secrets come from
``secrets_source()`` at the start of each connection, so a rotation takes effect on the
next one), calls ``session.connection_up(now)`` once it is sealed, moves records both
ways, and on the first of refusal, the session's ``ProtocolError``, end of stream,
stream error or handshake timeout logs ONE line (wire text through ``wire()``), counts
it in ``stats``, calls ``session.connection_down()``, closes the stream and returns a
``ConnectionEnd``. The session survives and resumes on the next ``run_connection``.
A newer ``run_connection`` that proves the secret replaces the running one (cancelled,
``REPLACED``), e.g. after a vMotion; one that cannot prove it costs it nothing.

Events for the application (every ``channels.Event`` but ``Writable``, which the
endpoint turns into ``wait_writable`` wakeups; ``ProtocolError`` is delivered too, after
its connection was dropped: ``SESSION_MISMATCH`` means the peer lost the session) come
from ``await endpoint.next_event()`` (or ``async for ev in endpoint.events()``). The
queue is bounded: while ``max_events`` events wait, the reader stops reading the stream,
which pushes back on the peer. The consumer must therefore not wait on the endpoint
(``wait_writable``, ``send_all``) in the loop that takes events: hand the work to tasks.
Events outlive connections: none is lost when a connection drops.

Application calls (``send``, ``eof``, ``resize``, ``open_exec``...) delegate to the
``Session`` and wake the connection's writer. ``send`` takes what fits the channel's
replay bound (BLOCK policy); ``await wait_writable(ch, stream)`` returns when there is
room (True) or the channel is gone (False); ``send_all`` does both in a loop.

Flow control is the ``Session``'s (``SessionConfig.ack_on_consume``, see
``common.proto.session.session``): with it the peer's bytes are acknowledged only as the
application reports them used with ``consumed(ch, stream, n)``, so the peer's replay
bound also bounds what this end holds per stream, and a slow sink never has to stop the
reader. ``ack_on_consume=True/False`` here switches the session's mode (None keeps its
config's), for this session and any ``replace_session`` brings. The tether uses it for
STDIN; an appliance may for output.

Liveness (``liveness=Liveness(keepalive, idle_timeout)``): for a stream that never ends
by itself (a serial line), empty sealed records keep an idle connection visibly alive
and a connection silent for ``idle_timeout`` ends, so a peer that restarted is found.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from common.io.sealedsession_conn import (
    ConnectionEnd,
    EndKind,
    Liveness,
    Sealed,
    authenticate,
    run_one,
)
from common.ops.wiretext import wire
from common.proto.session import channels as chs
from common.proto.session.channels import ChannelState, Role
from common.proto.session.messages import ExecSpec, ExitStatus, Stream
from common.proto.session.replay import Policy
from common.proto.session.secure import MAX_SECRETS, Established, SecureChannel
from common.proto.session.secure import Role as SecureRole
from common.proto.session.session import Session, SessionState
from common.proto.session.sync import DEFAULT_MAX_JUNK

__all__ = [
    "ConnectionEnd",
    "EndKind",
    "EndpointStats",
    "Liveness",
    "SecretsSource",
    "SessionEndpoint",
]

log = logging.getLogger("vic.session")

SecretsSource = Callable[[], Sequence[bytes]]  # current secret first; read per connection
_WARN = frozenset({EndKind.REFUSED, EndKind.PROTOCOL, EndKind.TIMEOUT, EndKind.NO_SECRET})


@dataclass
class EndpointStats:
    """Counters for metrics: connections by how they ended, refusals by code name."""

    connections: int = 0
    established: int = 0
    ended: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)


class SessionEndpoint:
    """See the module docstring."""

    def __init__(
        self,
        role: Role,
        session: Session,
        secrets_source: SecretsSource,
        *,
        name: str = "session",
        capabilities: Mapping[str, str] | None = None,
        max_events: int = 64,
        max_junk: int = DEFAULT_MAX_JUNK,
        random_bytes: Callable[[int], bytes] | None = None,
        ack_on_consume: bool | None = None,
        liveness: Liveness | None = None,
    ) -> None:
        if session.role is not role:
            raise ValueError(f"a {role.value} endpoint needs a {role.value} session")
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.role = role
        self.name = name
        self.stats = EndpointStats()
        self.last_established: Established | None = None
        self._ack_on_consume = ack_on_consume
        self._session = self._adopt(session)
        self._secrets_source = secrets_source
        self._capabilities = dict(capabilities or {})
        self._max_events = max_events
        self._max_junk = max_junk
        self._random_bytes = random_bytes
        self._events: deque[chs.Event] = deque()
        self._events_ready = trio.Event()
        self._events_room = trio.Event()
        self._changed = trio.Event()  # room, channel state or liveness may have changed
        self._writer: Callable[[], None] | None = None
        self._room_waiters = 0
        self._liveness = liveness
        self._active: trio.CancelScope | None = None
        self._active_done = trio.Event()

    # ------------------------------------------------------------ connections
    @property
    def session(self) -> Session:
        return self._session

    @property
    def live(self) -> bool:
        """A connection carries the session now (the peer's RESUME arrived)."""
        return self._session.state is SessionState.LIVE

    def replace_session(self, session: Session) -> None:
        """Start over with a new session (the peer lost the old one); drops the connection."""
        if session.role is not self.role:
            raise ValueError("the new session has the wrong role")
        if self._active is not None:
            self._active.cancel()
        self._session = self._adopt(session)
        self._notify()

    def _adopt(self, session: Session) -> Session:
        if self._ack_on_consume is not None:
            session.set_ack_on_consume(self._ack_on_consume)
        return session

    async def run_connection(
        self, stream: trio.abc.Stream, *, handshake_timeout: float, close_stream: bool = True
    ) -> ConnectionEnd:
        """Carry the session over ``stream`` until it ends; see the module docstring.

        ``close_stream=False`` leaves the stream open for the next connection: a serial
        line, where a new sealed channel starts on the same line (it skips what is left
        of the old one as junk before its sync marker).
        """
        self.stats.connections += 1
        try:
            end = await self._authenticated(stream, handshake_timeout)
        except BaseException:  # cancelled from outside while authenticating
            if close_stream:
                await trio.aclose_forcefully(stream)
            raise
        if isinstance(end, ConnectionEnd):
            if close_stream:
                await trio.aclose_forcefully(stream)
            self._record_end(end)
            return end
        channel, sealed = end
        while self._active is not None:  # the newest connection that proved the secret wins
            self._active.cancel()
            await self._active_done.wait()
        scope, done = trio.CancelScope(), trio.Event()
        self._active, self._active_done = scope, done
        ended = ConnectionEnd(EndKind.REPLACED, "replaced by a newer connection", True)
        try:
            with scope:
                ended = await run_one(self, stream, channel, sealed, liveness=self._liveness)
        finally:
            self._active = None
            done.set()
            self._notify()
            if close_stream:
                await trio.aclose_forcefully(stream)
        self._record_end(ended)
        return ended

    async def _authenticated(
        self, stream: trio.abc.Stream, handshake_timeout: float
    ) -> tuple[SecureChannel, Sealed] | ConnectionEnd:
        secrets = tuple(self._secrets_source())
        if not 0 < len(secrets) <= MAX_SECRETS:
            reason = f"{len(secrets)} session secrets; 1 to {MAX_SECRETS} needed"
            return ConnectionEnd(EndKind.NO_SECRET, reason, False)
        secure_role = SecureRole.INITIATOR if self.role is Role.APPLIANCE else SecureRole.RESPONDER
        channel = SecureChannel(
            secure_role,
            secrets,
            capabilities=self._capabilities,
            random_bytes=self._random_bytes,
            max_junk=self._max_junk,
        )
        if secure_role is SecureRole.INITIATOR:
            channel.start()
        sealed = await authenticate(stream, channel, handshake_timeout=handshake_timeout)
        return sealed if isinstance(sealed, ConnectionEnd) else (channel, sealed)

    def _record_end(self, end: ConnectionEnd) -> None:
        kind = end.kind.value
        self.stats.ended[kind] = self.stats.ended.get(kind, 0) + 1
        if end.kind in (EndKind.REFUSED, EndKind.PROTOCOL):
            label = f"{kind}:{end.code}"
            self.stats.refused[label] = self.stats.refused.get(label, 0) + 1
        level = logging.WARNING if end.kind in _WARN else logging.INFO
        code = "" if end.code is None else f" (code {end.code})"
        log.log(
            level,
            "%s: connection ended, %s%s: %s",
            wire(self.name),
            kind,
            code,
            wire(end.reason, 200),
        )

    # ------------------------------------------------------------ called by the connection
    def _set_writer(self, wake: Callable[[], None] | None) -> None:
        self._writer = wake

    def _connected(self, event: Established) -> None:
        self.last_established = event
        self.stats.established += 1

    def _outgoing(self, max_records: int) -> tuple[list[bytes], bool]:
        """The next batch for the wire, and whether there may be more (the writer loops)."""
        records = self._session.records_to_send(max_records=max_records)
        return records, bool(records)

    def _deliver(self, event: chs.Event) -> None:
        if isinstance(event, chs.Writable):
            self._notify()
            return
        if isinstance(event, chs.Resumed | chs.Exited | chs.ChannelClosed | chs.OpenRefused):
            self._notify()
        self._events.append(event)
        self._events_ready.set()

    async def _room_for_events(self) -> None:
        while len(self._events) >= self._max_events:
            self._events_room = trio.Event()
            await self._events_room.wait()

    def _after_receive(self) -> None:
        # An ACK frees room without a Writable event unless a write had been refused:
        # whoever waits for room looks again after each read.
        if self._room_waiters:
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _kick(self) -> None:
        if self._writer is not None:
            self._writer()

    # ------------------------------------------------------------ events
    async def next_event(self) -> chs.Event:
        """The next session event (waits for one); events outlive connections."""
        while not self._events:
            self._events_ready = trio.Event()
            await self._events_ready.wait()
        event = self._events.popleft()
        if len(self._events) < self._max_events:
            self._events_room.set()
        return event

    async def events(self) -> AsyncIterator[chs.Event]:
        while True:
            yield await self.next_event()

    async def wait_changed(self) -> None:
        """Until room, a channel's state or the connection's liveness may have changed."""
        await self._changed.wait()

    async def wait_live(self) -> None:
        """Until a connection carries the session (returns at once if one does)."""
        while not self.live:
            await self._changed.wait()

    # ------------------------------------------------------------ writing
    def _gone(self, ch: int) -> bool:
        state = self._session.channel_state(ch)
        return state is None or state is ChannelState.CLOSED

    async def wait_writable(self, ch: int, stream: Stream) -> bool:
        """Until ``stream`` of ``ch`` has room (True) or the channel is gone (False)."""
        while True:
            if self._gone(ch):
                return False
            if self._session.room(ch, stream) > 0:
                return True
            self._room_waiters += 1
            try:
                await self._changed.wait()
            finally:
                self._room_waiters -= 1

    def send(self, ch: int, stream: Stream, data: bytes) -> int:
        """Queue what fits the replay bound; how many bytes were taken."""
        taken = self._session.send(ch, stream, data)
        if taken:
            self._kick()
        return taken

    async def send_all(self, ch: int, stream: Stream, data: bytes) -> bool:
        """Queue all of ``data``, waiting for room; False if the channel went away first."""
        view = memoryview(data)
        while view:
            if not await self.wait_writable(ch, stream):
                return False
            taken = self.send(ch, stream, bytes(view))
            view = view[taken:]
        return True

    def consumed(self, ch: int, stream: Stream, n: int) -> None:
        """With ``ack_on_consume``: ``n`` more bytes of the peer's ``stream`` were used up
        (written on, or dropped); they are acknowledged. A no-op otherwise."""
        if n:
            self._session.consumed(ch, stream, n)
            self._kick()

    def eof(self, ch: int, stream: Stream) -> None:
        self._session.eof(ch, stream)
        self._kick()

    def close_stdin(self, ch: int) -> None:
        self.eof(ch, Stream.STDIN)

    def close(self, ch: int) -> None:
        self._session.close(ch)
        self._kick()

    # ------------------------------------------------------------ appliance calls
    def open_exec(self, spec: ExecSpec) -> int:
        ch = self._session.open_exec(spec)
        self._kick()
        return ch

    def open_attach(self, tty: bool = False, rows: int = 0, cols: int = 0) -> int:
        ch = self._session.open_attach(tty, rows, cols)
        self._kick()
        return ch

    def resize(self, ch: int, rows: int, cols: int) -> bool:
        """False while too many control messages await their ACK (try again later)."""
        queued = self._session.resize(ch, rows, cols)
        self._kick()
        return queued

    def signal(self, ch: int, signo: int) -> bool:
        queued = self._session.signal(ch, signo)
        self._kick()
        return queued

    # ------------------------------------------------------------ tether calls
    def accept(
        self, ch: int, *, replay_limit: int | None = None, policy: Policy | None = None
    ) -> bool:
        accepted = self._session.accept(ch, replay_limit=replay_limit, policy=policy)
        self._kick()
        self._notify()
        return accepted

    def reject(self, ch: int, reason: str) -> None:
        self._session.reject(ch, reason)
        self._kick()

    def exit(self, ch: int, status: ExitStatus) -> None:
        self._session.exit(ch, status)
        self._kick()
