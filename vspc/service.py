"""The vSPC service: ESX Telnet listeners, the switchboard adapter, consoles.

The sans-IO ``Switchboard`` (vspc.core.switchboard) decides which connection
carries each VM serial port and runs the vMotion state machine; this module
only feeds it events, executes the actions it returns, and keeps time.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

import trio
import trio.lowlevel

from vic.ops.metrics_http import serve_metrics
from vspc.config import VspcConfig
from vspc.console.hub import Console
from vspc.console.service import ConsoleService
from vspc.core import esx_session as es
from vspc.core import switchboard as sb
from vspc.core.identity import DEFAULT_LABEL, PortKey, canonical_uuid
from vspc.esx_conn import EsxConnection
from vspc.metrics import VspcMetrics

log = logging.getLogger("vspc")


def server_ssl_context(cert: os.PathLike[str] | str, key: os.PathLike[str] | str,
                       client_ca: os.PathLike[str] | str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class VspcService:
    def __init__(
        self,
        config: VspcConfig,
        *,
        metrics: VspcMetrics | None = None,
        secret_source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.metrics = metrics or VspcMetrics.create()
        self.consoles = ConsoleService(config.console, self.metrics)
        self.board = sb.Switchboard(
            vmotion_timeout=config.vmotion.timeout,
            max_concurrent_vmotions=config.vmotion.max_concurrent,
            to_vm_buffer_limit=config.vmotion.buffer_bytes,
        )
        self._secret_source = secret_source
        self._conns: set[EsxConnection] = set()
        self._inputs: set[PortKey] = set()
        self._begin_times: dict[EsxConnection, float] = {}
        self._deadline_changed = trio.Event()
        self._room: dict[PortKey, trio.Event] = {}
        self._displays: dict[PortKey, str] = {}
        self._handlers: trio.Nursery | None = None
        self._listen_scope: trio.CancelScope | None = None
        self.esx_port: int | None = None
        self.metrics_port: int | None = None
        self.metrics.connected_vms.set_function(self._count_connected)

    def _count_connected(self) -> int:
        return sum(1 for k in self.board.ports() if self.board.carrier(k) is not None)

    # -- lifecycle ---------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.consoles.run)
            nursery.start_soon(self._expiry_loop)
            if self.config.metrics.enabled:
                self.metrics_port = await nursery.start(
                    serve_metrics, self.metrics.registry, self.config.metrics.host,
                    self.config.metrics.port,
                )
            async with trio.open_nursery() as handlers:
                self._handlers = handlers
                self._listen_scope = trio.CancelScope()
                listeners = await self._open_listeners()
                handlers.start_soon(self._serve, listeners, self._listen_scope)
                log.info("vSPC listening on %s:%s", self.config.listen.host, self.esx_port)
                task_status.started(self)
            nursery.cancel_scope.cancel()

    async def _open_listeners(self) -> list[trio.abc.Listener[Any]]:
        lc = self.config.listen
        tcp = await trio.open_tcp_listeners(lc.port, host=lc.host)
        self.esx_port = tcp[0].socket.getsockname()[1]
        listeners: list[trio.abc.Listener[Any]] = list(tcp)
        if lc.tls is not None:
            ctx = server_ssl_context(lc.tls.cert, lc.tls.key, lc.tls.client_ca)
            listeners = [trio.SSLListener(t, ctx, https_compatible=False) for t in tcp]
        return listeners

    async def _serve(self, listeners: list[trio.abc.Listener[Any]], scope: trio.CancelScope) -> None:
        with scope:
            await trio.serve_listeners(self._accepted, listeners, handler_nursery=self._handlers)

    async def _accepted(self, stream: trio.abc.Stream) -> None:
        await self.handle_esx_stream(stream, _peer_name(stream))

    async def stop_listening(self) -> None:
        if self._listen_scope is not None:
            self._listen_scope.cancel()

    async def drain(self, deadline: float) -> None:
        """Stop accepting; give live connections until ``deadline`` to finish."""
        await self.stop_listening()
        if self._handlers is not None:
            self._handlers.cancel_scope.deadline = deadline

    async def reload(self, config: VspcConfig) -> None:
        """Apply a new config without dropping connections (SIGHUP)."""
        old = self.config
        self.config = config
        self.board.reconfigure(
            vmotion_timeout=config.vmotion.timeout,
            max_concurrent_vmotions=config.vmotion.max_concurrent,
        )
        await self.consoles.reconfigure(config.console)
        if old.listen != config.listen and self._handlers is not None:
            if self._listen_scope is not None:
                self._listen_scope.cancel()
                await trio.lowlevel.checkpoint()  # let the old listener close before rebinding
            listeners = await self._open_listeners()
            self._listen_scope = trio.CancelScope()
            self._handlers.start_soon(self._serve, listeners, self._listen_scope)
            log.info("vSPC now listening on %s:%s", config.listen.host, self.esx_port)
        log.info("configuration reloaded")

    # -- connections ---------------------------------------------------------------
    async def handle_esx_stream(self, stream: trio.abc.Stream, peer: str) -> None:
        """Serve one ESX Telnet stream (direct, or relayed through the endpoint)."""
        conn = EsxConnection(stream, peer, self.config.proxy_accepts)
        self._conns.add(conn)
        self.metrics.esx_connections.inc()
        self.board.connection_opened(conn)
        log.info("%r: connected", conn)
        await conn.run(self)

    async def connection_closed(self, conn: EsxConnection) -> None:
        self._conns.discard(conn)
        self._begin_times.pop(conn, None)
        self.metrics.esx_connections.dec()
        await self._execute(self.board.connection_closed(conn, trio.current_time()))
        log.info("%r: closed%s", conn, f" ({conn.close_reason})" if conn.close_reason else "")

    async def on_session_event(self, conn: EsxConnection, ev: object) -> None:
        now = trio.current_time()
        if isinstance(ev, es.ConsoleData):
            await self._execute(self.board.from_vm(conn, ev.data))
        elif isinstance(ev, es.VMotionBegin):
            self._begin_times[conn] = now
            secret = self._secret_source(self.config.vmotion.secret_bytes)
            await self._execute(self.board.begin(conn, ev.seq, secret, now))
            self._deadline_changed.set()
        elif isinstance(ev, es.VMotionPeer):
            await self._execute(self.board.peer(conn, ev.cookie, now))
        elif isinstance(ev, es.VMotionComplete):
            await self._execute(self.board.complete(conn, ev.seq, now))
        elif isinstance(ev, es.VMotionAbort):
            await self._execute(self.board.abort(conn, now))
        elif isinstance(ev, es.ProxyRequested):
            if ev.label and conn.label is None:
                conn.label = ev.label
            log.info("%r: DO-PROXY %s %s -> %s", conn, ev.direction, ev.uri,
                     "WILL" if ev.accepted else "WONT")
        elif isinstance(ev, es.VmName):
            conn.vm_name = ev.name
            key = self.board.port_of(conn)
            if key is not None:
                self._displays[key] = ev.name
        elif isinstance(ev, es.VmUuid):
            conn.raw_uuid = ev.raw
            try:
                uuid = canonical_uuid(ev.raw)
            except ValueError:
                self._violation(conn, f"bad VM-VC-UUID {ev.raw!r}")
                return
            label = conn.session.label or conn.label
            if label is None:
                # No DO-PROXY (a vMotion destination may send none): if this VM has a
                # port with a vMotion pending, this is its destination; PEER decides.
                pending = {v.key for v in self.board.pending_vmotions() if v.key.uuid == uuid}
                label = pending.pop().label if len(pending) == 1 else DEFAULT_LABEL
            key = PortKey(uuid, label)
            self._displays.setdefault(key, conn.vm_name or ev.raw)
            await self._execute(self.board.identified(conn, key, now))
        elif isinstance(ev, es.ProtocolViolation):
            self._violation(conn, ev.reason)

    def _violation(self, conn: EsxConnection, reason: str) -> None:
        log.warning("%r: protocol violation, closing: %s", conn, reason)
        self.metrics.protocol_errors_total.labels(where="esx").inc()
        conn.close_soon(f"protocol violation: {reason}")

    # -- executing switchboard actions --------------------------------------------
    async def _execute(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, sb.SendData):
                _c(a.conn).send_console(a.data)
                self.metrics.bytes_total.labels(direction="appliance_to_vm").inc(len(a.data))
            elif isinstance(a, sb.Deliver):
                self.metrics.bytes_total.labels(direction="vm_to_appliance").inc(len(a.data))
                await self._console(a.key).from_vm(a.data)
            elif isinstance(a, sb.SendGoahead):
                _c(a.conn).send_control(_c(a.conn).session.goahead(a.seq, a.secret))
                t0 = self._begin_times.pop(_c(a.conn), None)
                if t0 is not None:
                    self.metrics.begin_to_goahead_seconds.observe(trio.current_time() - t0)
            elif isinstance(a, sb.SendNotNow):
                _c(a.conn).send_control(_c(a.conn).session.notnow(a.seq))
                self._begin_times.pop(_c(a.conn), None)
                self.metrics.vmotions_total.labels(outcome="notnow").inc()
            elif isinstance(a, sb.SendPeerOk):
                _c(a.conn).send_control(_c(a.conn).session.peer_ok(a.seq))
            elif isinstance(a, sb.CloseConn):
                _c(a.conn).close_soon(a.reason)
            elif isinstance(a, sb.PortEvent):
                self._port_event(a)
            elif isinstance(a, sb.RoomAvailable):
                ev = self._room.pop(a.key, None)
                if ev is not None:
                    ev.set()
            elif isinstance(a, sb.ResumeReading):
                _c(a.conn).resume_reading()
            elif isinstance(a, sb.Dropped):
                log.warning("%r: %d bytes dropped: %s", a.conn, len(a.data), a.reason)

    def _console(self, key: PortKey) -> Console:
        console = self.consoles.open(key, self._displays.get(key, key.uuid))
        if key not in self._inputs:
            self._inputs.add(key)
            console.set_input(self._input_sink(key))
        return console

    def _port_event(self, ev: sb.PortEvent) -> None:
        conn = ev.conn
        log.info("port %s: %s %s%s", ev.key or "-", ev.kind, ev.detail,
                 f" ({conn!r})" if conn is not None else "")
        outcome = _OUTCOMES.get(ev.kind)
        if outcome:
            self.metrics.vmotions_total.labels(outcome=outcome).inc()
        if ev.key is None:
            return
        if isinstance(conn, EsxConnection):
            conn.key = self.board.port_of(conn)
        console = self._console(ev.key)
        fields: dict[str, object] = {"detail": ev.detail}
        if isinstance(conn, EsxConnection):
            fields["peer"] = conn.peer
        console.event(str(ev.kind), **fields)
        console.set_connected(self.board.carrier(ev.key) is not None)

    def _input_sink(self, key: PortKey) -> Callable[[bytes], Any]:
        async def sink(data: bytes) -> None:
            while data:
                room = self.board.to_vm_room(key)
                if room <= 0:
                    ev = self._room.setdefault(key, trio.Event())
                    await ev.wait()
                    continue
                chunk, data = data[:room], data[room:]
                await self._execute(self.board.to_vm(key, chunk))

        return sink

    async def _expiry_loop(self) -> None:
        while True:
            deadline = self.board.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await self._deadline_changed.wait()
                self._deadline_changed = trio.Event()
                continue
            await self._execute(self.board.tick(trio.current_time()))


def _c(conn: object) -> EsxConnection:
    assert isinstance(conn, EsxConnection)
    return conn


_OUTCOMES = {
    "vmotion_complete": "complete",
    "vmotion_abort": "abort",
    "vmotion_expire": "expired",
    "peer_refused": "peer_refused",
}


def _peer_name(stream: trio.abc.Stream) -> str:
    s: Any = stream
    while hasattr(s, "transport_stream"):
        s = s.transport_stream
    try:
        name = s.socket.getpeername()
    except (AttributeError, OSError):
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name) or "unix"
