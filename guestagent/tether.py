"""The tether's sealed session service (issue 13): exec over a ``SessionEndpoint``.

``Tether.run`` does three things at once:

* reads the per-VM secrets from guestinfo (``guestinfo.vice./tether/secrets``, current
  first) and keeps reading them as they change: the next connection speaks with the
  new list, so the appliance rotates a secret without restarting anything. A bad value
  is logged (one line) and the secrets held before stay in force;
* connects a channel (the first of its ``Transports`` that connects, preferred first:
  ``guestagent.session_transport``) and runs the endpoint over it, again and again:
  after a connection ends it waits a back-off (``Backoff``: doubling, reset by a
  connection that carried the session). A serial line stays open across sealed
  connections, until it breaks or a preferred transport connects;
* takes the session's events: ``ExecRequested`` starts an ``ExecChannel`` (at most
  ``max_execs`` at once; more are refused with a reason), STDIN data, RESIZE and SIGNAL
  go to it, the appliance's CLOSE kills it. If the appliance lost the session
  (``SESSION_MISMATCH``: it restarted), running execs are killed and a new session
  starts empty.

OPEN_ATTACH reaches the main process through ``tether_attach.MainAttach``, which the
agent hands to the main process's runner in place of the raw console link.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import trio

from common.io.guestinfo.base import BackendError, GuestBackend
from common.io.sealedsession import Liveness, SessionEndpoint
from common.io.sealedsession_conn import EndKind
from common.ops.wiretext import wire
from common.proto import guestinfo as gi
from common.proto.guestinfo.keys import decode_session_secrets, session_secrets_key
from common.proto.link.resume_state import Backoff
from common.proto.session import channels as chs
from common.proto.session.messages import ErrorCode, ExecSpec, Stream
from common.proto.session.session import Session, SessionConfig
from guestagent.channels import Channel, Connector
from guestagent.config import SessionSection
from guestagent.reaper import Reaper
from guestagent.session_transport import Transports, is_line
from guestagent.tether_attach import MainAttach
from guestagent.tether_exec import ExecChannel

log = logging.getLogger(__name__)

SECRET_RETRY = 1.0  # seconds between guestinfo reads after a backend error
LINE_HELLO = b"\r\n"  # before each sealed connection on a serial line (see _hello)


class SecretsWatch:
    """The secrets in guestinfo, re-read on change; callable as a ``SecretsSource``."""

    def __init__(self, backend: GuestBackend) -> None:
        self.backend = backend
        self.secrets: tuple[bytes, ...] = ()
        self._have = trio.Event()
        self._updated = trio.Event()

    def __call__(self) -> tuple[bytes, ...]:
        return self.secrets

    async def wait_available(self) -> None:
        await self._have.wait()

    async def wait_update(self) -> None:
        """Until the next read of the key (changed or not, valid or not)."""
        await self._updated.wait()

    def _take(self, raw: str | None) -> None:
        try:
            secrets = decode_session_secrets(raw)
        except gi.GuestinfoError as e:
            log.error("tether: %s; keeping the secrets held before", wire(str(e)))
            return
        if secrets != self.secrets:
            log.info("tether: %d session secret(s) in force", len(secrets))
        self.secrets = secrets
        if secrets:
            self._have.set()
        else:
            self._have = trio.Event()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Read once (then ``started``), then follow changes for ever."""
        key = session_secrets_key()
        last: dict[str, str | None] | None = None
        started = False
        while True:
            try:
                if last is None:
                    last = await self.backend.get_many([key])
                else:
                    last = await self.backend.wait_changed([key], last)
            except (BackendError, gi.GuestinfoError, OSError) as e:
                log.error("tether: reading the session secrets: %s", wire(str(e)))
                last = None
                await trio.sleep(SECRET_RETRY)
                continue
            self._take(last.get(key))
            self._updated.set()
            self._updated = trio.Event()
            if not started:
                started = True
                task_status.started()


class Tether:
    """See the module docstring."""

    def __init__(
        self,
        cfg: SessionSection,
        connector: Connector | Transports,
        *,
        backend: GuestBackend,
        reaper: Reaper,
        container_pid: Callable[[], int | None] = lambda: None,
        name: str = "tether",
    ) -> None:
        self.cfg = cfg
        # the channels the session may run over, preferred first (one: a bare connector)
        self.transports = (
            connector if isinstance(connector, Transports) else Transports.one(connector)
        )
        self.reaper = reaper
        self.container_pid = container_pid
        self.secrets = SecretsWatch(backend)
        liveness = Liveness(
            keepalive=cfg.keepalive or math.inf, idle_timeout=cfg.idle_timeout or math.inf
        )
        self.endpoint = SessionEndpoint(
            chs.Role.TETHER,
            self._new_session(),
            self.secrets,
            name=name,
            ack_on_consume=True,
            liveness=liveness,
        )
        self.execs: dict[int, ExecChannel] = {}
        # the main process's attach; the agent runs it as the runner's console
        self.main = MainAttach(
            self.endpoint, hold_bytes=cfg.replay_bytes, replay_bytes=cfg.replay_bytes
        )
        self._nursery: trio.Nursery | None = None
        self._carried = False  # the channel in use carried the session at some point

    def _new_session(self) -> Session:
        return Session(chs.Role.TETHER, config=SessionConfig(replay_limit=self.cfg.replay_bytes))

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.secrets.run)
            nursery.start_soon(self._connections)
            task_status.started()
            await self._events()

    # ------------------------------------------------------------ connections
    async def _connections(self) -> None:
        backoff = Backoff(self.cfg.backoff_min, self.cfg.backoff_max)
        last_error = ""
        switch: tuple[int, Channel] | None = None
        start = 0  # the next connect's first transport: past one that never carried it
        while True:
            await self.secrets.wait_available()
            if switch is None:
                try:
                    switch = await self.transports.connect(start)
                except OSError as e:
                    if str(e) != last_error:  # one line per distinct failure, not per retry
                        last_error = str(e)
                        log.warning("tether: cannot connect: %s; retrying", wire(last_error))
                    await trio.sleep(backoff.next())
                    continue
                last_error = ""
            index, channel = switch
            self._carried = False
            try:
                switch = await self._carry(index, channel, backoff)
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        await channel.aclose()
                    except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
                        pass
            if switch is None:
                start = 0 if self._carried else (index + 1) % len(self.transports.transports)
                await trio.sleep(backoff.next())

    async def _carry(
        self, index: int, channel: Channel, backoff: Backoff
    ) -> tuple[int, Channel] | None:
        """Sealed connections over ``channel`` (transport ``index``): one over a
        connection; on a serial line one after another, until the line breaks (None:
        connect again) or a transport preferred over it connects (that one)."""
        line = is_line(channel)
        while True:
            if line and not await _hello(channel):
                return None
            end = await self.endpoint.run_connection(
                channel.stream, handshake_timeout=self.cfg.handshake_timeout, close_stream=not line
            )
            if end.established:
                backoff.reset()
                self._carried = True
            if not line or end.kind in (EndKind.EOF, EndKind.STREAM_ERROR):
                return None
            better = await self.transports.preferred(index)
            if better is not None:
                log.info("tether: leaving %s for %s", channel.name, better[1].name)
                return better
            await trio.sleep(backoff.next())
            await self.secrets.wait_available()

    # ------------------------------------------------------------ events
    async def _events(self) -> None:
        async for event in self.endpoint.events():
            self._on_event(event)

    def _on_event(self, event: chs.Event) -> None:
        match event:
            case chs.ExecRequested(ch, spec):
                self._start_exec(ch, spec)
            case chs.AttachRequested(ch, tty, rows, cols):
                self.main.attach(ch, tty, rows, cols)
            case chs.Gap(ch, stream, start, end):
                log.warning("tether: channel %d lost %s bytes %d..%d", ch, stream.name, start, end)
            case chs.ProtocolError(code, _) if code is ErrorCode.SESSION_MISMATCH:
                self._session_lost()
            case chs.Data() | chs.Eof() | chs.Resized() | chs.Signalled() | chs.ChannelClosed():
                if (ex := self.execs.get(event.ch)) is not None:
                    _to_exec(ex, event)
                elif self.main.owns(event.ch):
                    _to_main(self.main, event)
                elif isinstance(event, chs.Data):  # no process for it: used up now
                    self.endpoint.consumed(event.ch, event.stream, len(event.data))
            case _:
                pass

    def _start_exec(self, ch: int, spec: ExecSpec) -> None:
        if len(self.execs) >= self.cfg.max_execs:
            self.endpoint.reject(ch, f"too many execs running ({len(self.execs)})")
            return
        ex = ExecChannel(
            self.endpoint,
            ch,
            spec,
            reaper=self.reaper,
            container_pid=self.container_pid(),
            stdin_limit=self.cfg.stdin_bytes,
            drain_grace=self.cfg.drain_grace,
        )
        self.execs[ch] = ex
        assert self._nursery is not None
        self._nursery.start_soon(self._run_exec, ex)

    async def _run_exec(self, ex: ExecChannel) -> None:
        try:
            await ex.run()
        finally:
            if self.execs.get(ex.ch) is ex:
                del self.execs[ex.ch]

    def _session_lost(self) -> None:
        log.warning("tether: the appliance lost the session; %d exec(s) killed", len(self.execs))
        for ex in list(self.execs.values()):
            ex.peer_closed()
        self.execs.clear()
        self.main.detach_all()
        self.endpoint.replace_session(self._new_session())


async def _hello(channel: Channel) -> bool:
    """Say something on a line before a sealed connection starts on it: a relay whose
    appliance ended the last stream starts the next when the VM speaks (the tether, the
    responder, would otherwise wait in silence for a handshake). Junk to the appliance."""
    try:
        await channel.stream.send_all(LINE_HELLO)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
        log.info("tether: %s: %s", channel.name, wire(str(e)))
        return False
    return True


def _to_exec(
    ex: ExecChannel, event: chs.Data | chs.Eof | chs.Resized | chs.Signalled | chs.ChannelClosed
) -> None:
    match event:
        case chs.Data(_, Stream.STDIN, data):
            ex.put_stdin(data)
        case chs.Eof(_, Stream.STDIN):
            ex.end_stdin()
        case chs.Resized(_, rows, cols):
            ex.resize(rows, cols)
        case chs.Signalled(_, signo):
            ex.signal(signo)
        case chs.ChannelClosed():
            ex.peer_closed()
        case _:
            pass


def _to_main(
    main: MainAttach, event: chs.Data | chs.Eof | chs.Resized | chs.Signalled | chs.ChannelClosed
) -> None:
    match event:
        case chs.Data(ch, Stream.STDIN, data):
            main.input(ch, data)
        case chs.Signalled(ch, signo):
            main.signal(ch, signo)
        case chs.Resized(ch, rows, cols):
            main.resize(ch, rows, cols)
        case chs.ChannelClosed(ch):
            main.detach(ch)
        case _:  # EOF of one attach's input is not the process's
            pass
