"""The vSPC service: ESX Telnet listeners, the switchboard adapter, consoles.

The sans-IO ``Switchboard`` (vspc.core.switchboard) decides which connection
carries each VM serial port and runs the vMotion state machine; this module
only feeds it events, executes the actions it returns, and keeps time.

Nothing an ESX connection's reader does waits on a console, a client or the
disk: console bytes go into a per-port backlog drained by a short-lived task
(in port order, so a vMotion source's bytes still come before the
destination's), and the reader stops reading only when that backlog passes
``console_backlog_bytes``. So VMOTION-BEGIN is answered as soon as it is read.

Who may stay (the sans-IO ``LivenessTable`` keeps the clocks; one task acts on
them): a Telnet connection from outside ``listen.allowed-sources`` is closed at
accept; one without a VM-VC-UUID after ``identify-timeout``, or past the hold
limit before it, is closed; a silent one is probed (IAC DO TIMING-MARK) after
``idle-probe`` and closed if it does not answer within ``probe-timeout``. A
takeover of a carried port from another source address waits for such a probe
of the carrier (the switchboard decides). Each refusal is one log line and
``vspc_telnet_refused_total{reason}``.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import ssl
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import trio

from common.io import tlsctx
from common.io.listen import listening
from common.io.streamlayers import find_layer
from common.ops import lifecycle
from common.ops.config import ConfigError
from common.ops.metrics_http import serve_metrics
from common.ops.wiretext import wire
from common.proto.telnet import vmware as ext
from vspc.config import ListenConfig, MetricsConfig, VspcConfig, address_allowed
from vspc.console.chunks import coalesce
from vspc.console.hub import Console, Link
from vspc.console.service import ConsoleService
from vspc.core import esx_session as es
from vspc.core import switchboard as sb
from vspc.core.identity import DEFAULT_LABEL, PortKey, canonical_uuid
from vspc.core.liveness import Due, LivenessPolicy, LivenessTable
from vspc.esx_conn import CLOSE_FLUSH_SECONDS, EsxConnection, peer_gone
from vspc.metrics import VspcMetrics

log = logging.getLogger("vspc")

#: Console bytes of one port waiting for its console (disk backpressure) before
#: the port's ESX connection is no longer read (at most ``console.log-hold-bytes``;
#: none while the log disk is full).
CONSOLE_BACKLOG_BYTES = 4 << 20

#: The cyclic GC with thousands of connections (16,000 VMs: ~1M tracked objects):
#:
#: * Python starts a full collection whenever a quarter more objects reached its
#:   oldest generation (with console traffic, every few tens of seconds) and one
#:   walks every object of every connection: ~0.5-1 s with the loop stalled.
#: * A young collection starts when allocations outnumber deallocations by 700.
#:   Each console line replaces a connection's wait-for-the-next-read objects (trio's
#:   await chain, the last event, ...) with new ones that live until the next line:
#:   old objects die as many young ones are born, so that count stays low while
#:   the young generation grows by ~20k objects a second, until some burst starts
#:   a collection that walks all of them (0.1-0.4 s seen at 16k VMs).
#:
#: So while a service runs, automatic full collections are off and every
#: GC_FREEZE_INTERVAL everything alive is moved to the permanent generation
#: (``gc.freeze()``: a list splice, no walk), so a young collection never has more
#: than that interval's survivors to walk. Objects still die by reference counting
#: as usual; only cyclic garbage older than the interval waits for the full
#: collection run every GC_FULL_INTERVAL (``unfreeze``, ``collect``, ``freeze``), at a
#: moment no vMotion is pending (waiting at most GC_QUIET_WAIT for one). The
#: service makes next to no cyclic garbage while running (connections torn down by
#: errors or a drain make some).
GC_FREEZE_INTERVAL = 0.05
GC_FULL_INTERVAL = 3600.0
GC_QUIET_WAIT = 60.0
_GC_NEVER = 1 << 30
_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


@contextmanager
def _gc_policy() -> Iterator[None]:
    """Process-wide while any service runs (nested services share it); on the way
    out of the last one the thresholds come back and frozen objects are unfrozen."""
    global _gc_users, _gc_saved
    if _gc_users == 0:
        _gc_saved = gc.get_threshold()
        t0, t1, _t2 = _gc_saved
        gc.set_threshold(t0, t1, _GC_NEVER)
    _gc_users += 1
    try:
        yield
    finally:
        _gc_users -= 1
        if _gc_users == 0 and _gc_saved is not None:
            gc.set_threshold(*_gc_saved)
            _gc_saved = None
            gc.unfreeze()


def server_ssl_context(
    cert: os.PathLike[str] | str,
    key: os.PathLike[str] | str,
    client_ca: os.PathLike[str] | str | None = None,
) -> ssl.SSLContext:
    return tlsctx.server_context(cert, key, client_ca=client_ca, keylog=True)


@dataclass(eq=False)
class _Backlog:
    """Console bytes of one port not yet taken by its console, in order (chunks as read)."""

    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    running: bool = False
    paused: set[EsxConnection] = field(default_factory=set)


@dataclass(eq=False)
class _Server:
    """A running listener task (ESX listeners or the metrics server)."""

    scope: trio.CancelScope
    done: trio.Event


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
            max_vmotions_per_source=config.vmotion.max_per_source,
        )
        self.liveness = LivenessTable(_liveness_policy(config.listen))
        self._allowed = config.listen.source_networks()
        self._liveness_changed = trio.Event()
        self._liveness_wake_at = math.inf  # when the liveness loop wakes next
        self.console_backlog_bytes = CONSOLE_BACKLOG_BYTES
        self._secret_source = secret_source
        self._conns: set[EsxConnection] = set()
        self._conns_changed = trio.Event()
        self._backlog_gone = trio.Event()  # set (and replaced) as each backlog empties
        self._links: dict[PortKey, Link] = {}  # ports whose console has this service's link
        self._deadline_changed = trio.Event()
        self._room: dict[PortKey, trio.Event] = {}
        self._displays: dict[PortKey, str] = {}
        self._backlogs: dict[PortKey, _Backlog] = {}
        self._deferred: dict[EsxConnection, str] = {}  # conn -> canonical uuid
        # Set by the endpoint when [endpoint.vcenter] is configured: why the relay on
        # `host` may not speak for VM `raw_uuid` (None: it may).
        self.relayed_vm_check: Callable[[str, str], Coroutine[Any, Any, str | None]] | None = None
        self._settled = False
        self._tasks: trio.Nursery | None = None
        self._handlers: trio.Nursery | None = None
        self._listener: _Server | None = None
        self._metrics_server: _Server | None = None
        self._draining = False
        self.esx_port: int | None = None
        self.metrics_port: int | None = None
        # vspc_connected_vms: the ESX ports with a carrier are added here as they
        # change (O(1), never a scan of every port); raw streams relayed through the
        # endpoint add themselves.
        self._carried = 0
        self._bytes_to_vm = self.metrics.bytes_total.labels(direction="appliance_to_vm")
        self._bytes_from_vm = self.metrics.bytes_total.labels(direction="vm_to_appliance")

    def _sync_connected(self) -> None:
        n = self.board.carried_ports()
        if n != self._carried:
            self.metrics.connected_vms.inc(n - self._carried)
            self._carried = n

    # -- lifecycle ---------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Open every listener (a failure raises ConfigError naming the key, before
        anything is logged), then serve until cancelled or drained."""
        with _gc_policy():
            async with trio.open_nursery() as nursery:
                self._tasks = nursery
                async with trio.open_nursery() as handlers:
                    self._handlers = handlers
                    self._listener = await self._start_listening(self.config.listen, quiet=True)
                    if self.config.metrics.enabled:
                        self._metrics_server = await self._start_metrics(
                            self.config.metrics, quiet=True
                        )
                    await nursery.start(self.consoles.run)
                    nursery.start_soon(self._expiry_loop)
                    nursery.start_soon(self._liveness_loop)
                    nursery.start_soon(self._gc_loop)
                    self._log_listening(self.config.listen)
                    if self._metrics_server is not None:
                        self._log_metrics(self.config.metrics)
                    task_status.started(self)
                nursery.cancel_scope.cancel()

    def _log_listening(self, lc: ListenConfig) -> None:
        log.info(
            "vSPC listening on %s:%s%s",
            lc.host,
            self.esx_port,
            " (TLS)" if lc.tls is not None else "",
        )

    def _log_metrics(self, mc: MetricsConfig) -> None:
        log.info("metrics on http://%s:%s/metrics", mc.host, self.metrics_port)

    async def _start_listening(self, lc: ListenConfig, *, quiet: bool = False) -> _Server:
        """Open the ESX listeners (raises ConfigError naming the key if impossible)."""
        assert self._handlers is not None
        with listening("listen.port", host_key="listen.host", where=f"{lc.host}:{lc.port}"):
            tcp = await trio.open_tcp_listeners(lc.port, host=lc.host)
        listeners: list[trio.abc.Listener[Any]] = list(tcp)
        if lc.tls is not None:
            try:
                ctx = server_ssl_context(lc.tls.cert, lc.tls.key, lc.tls.client_ca)
            except (OSError, ssl.SSLError) as e:
                for t in tcp:
                    await t.aclose()
                raise ConfigError("listen.tls", f"cannot load the certificate: {e}") from None
            listeners = [trio.SSLListener(t, ctx, https_compatible=False) for t in tcp]
        self.esx_port = tcp[0].socket.getsockname()[1]
        server = _Server(trio.CancelScope(), trio.Event())
        self._handlers.start_soon(self._serve, listeners, server)
        if not quiet:
            self._log_listening(lc)
        return server

    async def _serve(self, listeners: list[trio.abc.Listener[Any]], server: _Server) -> None:
        try:
            with server.scope:
                await trio.serve_listeners(
                    self._accepted, listeners, handler_nursery=self._handlers
                )
        finally:
            with trio.CancelScope(shield=True):
                for lst in listeners:
                    await trio.aclose_forcefully(lst)
            server.done.set()

    @staticmethod
    async def _stop(server: _Server | None) -> None:
        if server is not None:
            server.scope.cancel()
            await server.done.wait()

    async def _start_metrics(self, mc: MetricsConfig, *, quiet: bool = False) -> _Server:
        assert self._tasks is not None
        server = _Server(trio.CancelScope(), trio.Event())

        async def serve(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with server.scope:
                    await serve_metrics(
                        self.metrics.registry, mc.host, mc.port, task_status=task_status
                    )
            finally:
                server.done.set()

        with listening("metrics.port", host_key="metrics.host", where=f"{mc.host}:{mc.port}"):
            self.metrics_port = await self._tasks.start(serve)
        if not quiet:
            self._log_metrics(mc)
        return server

    def _accepted(self, stream: trio.abc.Stream) -> Coroutine[Any, Any, None]:
        # Not a coroutine function itself (nor is handle_esx_stream): a connection's
        # task holds one coroutine frame less each (16k connections: ~0.5 KiB each).
        peer = _peer_name(stream)
        if not address_allowed(_source_of(peer), self._allowed):
            log.warning(
                "Telnet connection from %s refused: not in listen.allowed-sources", wire(peer)
            )
            self.metrics.telnet_refused_total.labels(reason="source").inc()
            return _close_refused(stream)
        return self.handle_esx_stream(stream, peer)

    async def stop_listening(self) -> None:
        await self._stop(self._listener)
        self._listener = None

    async def drain(self, deadline: float) -> None:
        """Stop accepting; give live connections until ``deadline`` to finish.

        Then the remaining ESX connections are closed (after flushing what is
        queued for them) and the console logs are flushed. Returns when done.
        """
        self._draining = True
        await self.stop_listening()
        gone = partial(lifecycle.wait_until, lambda: not self._conns, lambda: self._conns_changed)
        if not await lifecycle.graceful(deadline, gone, lambda: None):
            for conn in list(self._conns):
                conn.close_soon("vSPC shutting down")
            with trio.move_on_after(CLOSE_FLUSH_SECONDS + 1.0):
                await gone()
        with trio.move_on_after(5.0):  # console bytes still on their way to the consoles
            await lifecycle.wait_until(lambda: not self._backlogs, lambda: self._backlog_gone)
            await self.consoles.writer.flush()
        if self._handlers is not None:
            self._handlers.cancel_scope.cancel()

    async def reload(self, config: VspcConfig) -> None:
        """Apply a new config without dropping connections (SIGHUP).

        A listener that cannot be opened is logged and the old one is kept.
        """
        old = self.config
        if old.listen != config.listen and self._handlers is not None and not self._draining:
            try:
                await self._relisten(old.listen, config.listen)
            except ConfigError as e:
                log.error("reload: %s; keeping the old ESX listener", e)
                config = replace(config, listen=old.listen)
        if old.metrics != config.metrics and self._tasks is not None:
            await self._stop(self._metrics_server)
            self._metrics_server = None
            try:
                if config.metrics.enabled:
                    self._metrics_server = await self._start_metrics(config.metrics)
            except ConfigError as e:
                log.error("reload: %s; keeping the old metrics endpoint", e)
                config = replace(config, metrics=old.metrics)
                if old.metrics.enabled:
                    self._metrics_server = await self._start_metrics(old.metrics)
        self.config = config
        self.board.reconfigure(
            vmotion_timeout=config.vmotion.timeout,
            max_concurrent_vmotions=config.vmotion.max_concurrent,
            max_vmotions_per_source=config.vmotion.max_per_source,
        )
        self.liveness.reconfigure(_liveness_policy(config.listen))
        self._allowed = config.listen.source_networks()
        if config.vmotion.buffer_bytes != old.vmotion.buffer_bytes:
            log.warning("reload: vmotion.buffer-bytes changes only at restart")
        self._deadline_changed.set()
        await self.consoles.reconfigure(config.console)
        log.info("configuration reloaded")

    async def _relisten(self, old: ListenConfig, new: ListenConfig) -> None:
        same_addr = old.host == new.host and new.port != 0 and new.port in (old.port, self.esx_port)
        if same_addr:  # the port is ours: free it, then bind again (or go back)
            bound = replace(old, port=self.esx_port or old.port)
            await self.stop_listening()
            try:
                self._listener = await self._start_listening(new)
            except ConfigError:
                self._listener = await self._start_listening(bound)
                raise
        else:  # bind the new address first, so a failure leaves the old one
            server = await self._start_listening(new)
            await self.stop_listening()
            self._listener = server

    # -- connections ---------------------------------------------------------------
    def handle_esx_stream(self, stream: trio.abc.Stream, peer: str) -> Coroutine[Any, Any, None]:
        """Serve one ESX Telnet stream (direct, or relayed through the endpoint).

        ``await service.handle_esx_stream(stream, peer)``: the connection is
        registered by the call, and served by the coroutine it returns (await it at once).
        """
        conn = EsxConnection(stream, peer, self.config.proxy_accepts)
        self._conns.add(conn)
        self._changed()
        self.metrics.esx_connections.inc()
        self.board.connection_opened(conn, _source_of(peer))
        conn.liveness = self.liveness.opened(conn, trio.current_time())
        self._liveness_scheduled(conn.liveness.check_at)
        log.info("%r: connected", conn)
        return conn.run(self)

    def _changed(self) -> None:
        self._conns_changed.set()
        self._conns_changed = trio.Event()

    async def connection_closed(self, conn: EsxConnection) -> None:
        self._conns.discard(conn)
        self._deferred.pop(conn, None)
        self.liveness.closed(conn)
        if conn.refusal is not None:
            self.metrics.telnet_refused_total.labels(reason=conn.refusal).inc()
        self.metrics.esx_connections.dec()
        await self._execute(self.board.connection_closed(conn, trio.current_time()))
        log.info(
            "%r: closed%s", conn, f" ({wire(conn.close_reason, 200)})" if conn.close_reason else ""
        )
        self._changed()

    def may_read(self, conn: EsxConnection) -> bool:
        """Whether the reader of ``conn`` may read more (else wait for resume_reading)."""
        if self.board.from_vm_room(conn) <= 0:
            if conn.raw_uuid is None and self.board.port_of(conn) is None:  # never said who
                conn.refuse(
                    "flood", f"{self.board.from_vm_held(conn)} bytes sent before any VM-VC-UUID"
                )
            return False  # the switchboard sends ResumeReading
        key = self.board.port_of(conn)
        if key is None:
            return True
        backlog = self._backlogs.get(key)
        if backlog is None or backlog.size < self._backlog_limit():
            return True
        backlog.paused.add(conn)
        return False

    async def on_session_event(self, conn: EsxConnection, ev: object) -> None:  # noqa: C901
        now = trio.current_time()
        if isinstance(ev, es.ConsoleData):
            await self._execute(self.board.from_vm(conn, ev.data))
        elif isinstance(ev, ext.VMotionBegin):
            secret = self._secret_source(self.config.vmotion.secret_bytes)
            await self._execute(
                self.board.begin(conn, ev.seq, secret, now),
                received=conn.received_at,
                answer_on=conn,
            )
            self._deadline_changed.set()
        elif isinstance(ev, ext.VMotionPeer):
            actions = self.board.peer(conn, ev.cookie, now)
            await self._execute(actions, answer_on=conn)
            if self.board.port_of(conn) is not None:
                self._deferred.pop(conn, None)
                self.liveness.identified(conn)  # bound by its cookie: it is who it says
            if any(
                isinstance(a, sb.PortEvent)
                and a.kind is sb.EventKind.PEER_REFUSED
                and a.conn is conn
                for a in actions
            ):
                self._peer_refused(conn)
        elif isinstance(ev, ext.VMotionComplete):
            await self._execute(self.board.complete(conn, ev.seq, now))
            self._deadline_changed.set()
        elif isinstance(ev, ext.VMotionAbort):
            await self._execute(self.board.abort(conn, now))
        elif isinstance(ev, es.ProxyRequested):
            if ev.label and conn.label is None:
                conn.label = ev.label
            log.info(
                "%r: DO-PROXY %s %s -> %s",
                conn,
                ev.direction,
                wire(ev.uri),
                "WILL" if ev.accepted else "WONT",
            )
        elif isinstance(ev, ext.VmName):
            conn.vm_name = ev.name
            key = self.board.port_of(conn)
            if key is not None:
                self._displays[key] = ev.name
                console = self.consoles.get(key)
                if console is not None:
                    self.consoles.open(key, ev.name)
        elif isinstance(ev, es.VmUuid):
            self.liveness.identified(conn)
            await self._identified(conn, ev.raw, now)
        elif isinstance(ev, es.ProtocolViolation):
            self._violation(conn, ev.reason)

    async def _identified(self, conn: EsxConnection, raw: str, now: float) -> None:
        conn.raw_uuid = raw
        try:
            uuid = canonical_uuid(raw)
        except ValueError:
            self._violation(conn, f"bad VM-VC-UUID {raw}")
            return
        if not await self._relay_may_speak_for(conn, raw, uuid):
            return
        label = conn.session.label or conn.label
        if label is None and self._vmotion_pending(uuid):
            # Most likely a vMotion destination (it need not send DO-PROXY, so its
            # port label is unknown): VMOTION-PEER will bind it by cookie.
            self._deferred[conn] = uuid
            log.info(
                "%r: VM %s, no port label, a vMotion of this VM is pending: "
                "waiting for VMOTION-PEER",
                conn,
                wire(raw),
            )
            return
        key = PortKey(uuid, label or DEFAULT_LABEL)
        self._displays.setdefault(key, conn.vm_name or raw)
        await self._execute(self.board.identified(conn, key, now))

    async def _relay_may_speak_for(self, conn: EsxConnection, raw: str, uuid: str) -> bool:
        """A Telnet stream relayed from host H may name only a VM that vCenter places
        on H (with ``[endpoint.vcenter]``). A pending vMotion of the VM is the
        exception: its destination host speaks for it before vCenter moves it, and
        VMOTION-PEER's secret is the proof then."""
        if self.relayed_vm_check is None or not conn.peer.startswith("relay:"):
            return True
        if self._vmotion_pending(uuid):
            return True
        reason = await self.relayed_vm_check(raw, conn.peer.removeprefix("relay:"))
        if reason is None:
            return True
        log.warning("%r: refused: %s", conn, wire(reason))
        self.metrics.telnet_refused_total.labels(reason="placement").inc()
        conn.close_soon(f"refused: {reason}")
        return False

    def _vmotion_pending(self, uuid: str) -> bool:
        return any(v.key.uuid == uuid for v in self.board.pending_vmotions())

    async def _resolve_deferred(self) -> None:
        """vMotions settled: a deferred connection no vMotion took is a plain VM connection."""
        self._settled = False
        for conn, uuid in list(self._deferred.items()):
            if self.board.port_of(conn) is not None or conn.closing:
                self._deferred.pop(conn, None)
            elif not self._vmotion_pending(uuid):
                self._deferred.pop(conn, None)
                key = PortKey(uuid, DEFAULT_LABEL)
                self._displays.setdefault(key, conn.vm_name or conn.raw_uuid or uuid)
                await self._execute(self.board.identified(conn, key, trio.current_time()))

    def _peer_refused(self, conn: EsxConnection) -> None:
        key = self.board.port_of(conn)
        if key is not None and self.board.carrier(key) is conn:
            return  # a confused carrier: refusing is enough, its VM stays connected
        conn.close_soon("VMOTION-PEER refused")

    def _violation(self, conn: EsxConnection, reason: str) -> None:
        log.warning("%r: protocol violation, closing: %s", conn, wire(reason, 200))
        self.metrics.protocol_errors_total.labels(where="esx").inc()
        conn.close_soon(f"protocol violation: {reason}")

    # -- executing switchboard actions --------------------------------------------
    async def _execute(  # noqa: C901
        self,
        actions: list[Any],
        *,
        received: float | None = None,
        answer_on: EsxConnection | None = None,
    ) -> None:
        """Carry out switchboard actions in order. A vMotion answer for ``answer_on``
        (the connection whose reader calls) is written before anything else is done."""
        for a in actions:
            if isinstance(a, sb.SendData):
                _c(a.conn).send_console(a.data)
                self._bytes_to_vm.inc(len(a.data))
            elif isinstance(a, sb.Deliver):
                self._bytes_from_vm.inc(len(a.data))
                await self._deliver(a.key, a.data)
            elif isinstance(a, sb.SendGoahead):
                conn = _c(a.conn)
                data = conn.session.goahead(a.seq, a.secret)
                if received is not None:  # (trio's send returns after a schedule point)
                    self.metrics.begin_to_goahead_seconds.observe(trio.current_time() - received)
                await self._answer(conn, data, answer_on)
            elif isinstance(a, sb.SendNotNow):
                conn = _c(a.conn)
                await self._answer(conn, conn.session.notnow(a.seq), answer_on)
                self.metrics.vmotions_total.labels(outcome="notnow").inc()
            elif isinstance(a, sb.SendPeerOk):
                conn = _c(a.conn)
                await self._answer(conn, conn.session.peer_ok(a.seq), answer_on)
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
            elif isinstance(a, sb.ProbeConn):
                self._probe(_c(a.conn))
        self._sync_connected()
        if self._settled and self._deferred:
            await self._resolve_deferred()

    @staticmethod
    async def _answer(conn: EsxConnection, data: bytes, answer_on: EsxConnection | None) -> None:
        if conn is answer_on:
            await conn.send_control_now(data)  # from its reader: at once
        else:
            conn.send_control(data)  # another task: the connection's writer sends it

    async def _deliver(self, key: PortKey, data: bytes) -> None:
        """Console bytes, in port order; never waits (a backlog task does)."""
        backlog = self._backlogs.get(key)
        console = self._console(key)
        if backlog is None and console.log_room() >= len(data):
            await console.from_vm(data)  # room: from_vm neither waits nor yields
            return
        if backlog is None:
            backlog = self._backlogs[key] = _Backlog()
        backlog.chunks.append(data)
        backlog.size += len(data)
        if not backlog.running:
            backlog.running = True
            assert self._tasks is not None
            self._tasks.start_soon(self._drain_backlog, key, backlog)

    async def _drain_backlog(self, key: PortKey, backlog: _Backlog) -> None:
        console = self._console(key)
        try:
            while backlog.chunks:
                chunks, backlog.chunks, backlog.size = backlog.chunks, [], 0
                for data in coalesce(chunks):  # big chunks as they are: no copy
                    await console.from_vm(data)
                if backlog.paused and backlog.size < self._backlog_limit():
                    paused, backlog.paused = backlog.paused, set()
                    for conn in paused:
                        conn.resume_reading()
        finally:
            backlog.running = False
            if not backlog.chunks:
                del self._backlogs[key]
                self._backlog_gone.set()
                self._backlog_gone = trio.Event()
            for conn in backlog.paused:
                conn.resume_reading()

    def _backlog_limit(self) -> int:
        """Console bytes a port may have waiting before its connection is no longer
        read: at most ``log-hold-bytes``, and none while the log disk is full (the
        held bytes are the budget then)."""
        writer = self.consoles.writer
        if writer.holding:
            return 0
        return min(self.console_backlog_bytes, writer.settings.hold_bytes)

    def _console(self, key: PortKey) -> Console:
        return self.consoles.open(key, self._displays.get(key, ""))  # "": keep the console's

    def _sync_link(self, key: PortKey, console: Console) -> None:
        """The console has a live link from here while the port has a carrier or a
        vMotion pending (its input is then buffered for the destination)."""
        live = self.board.carrier(key) is not None or any(
            v.key == key for v in self.board.pending_vmotions()
        )
        link = self._links.get(key)
        if live and link is None:
            self._links[key] = console.connect(_InputSink(self, key))
        elif not live and link is not None:
            del self._links[key]
            self._displays.pop(key, None)  # the console keeps it; a reconnect tells it again
            console.disconnect(link)

    def _port_event(self, ev: sb.PortEvent) -> None:
        conn = ev.conn
        if log.isEnabledFor(logging.INFO):  # (the repr is not free)
            log.info(
                "port %s: %s %s%s",
                wire(str(ev.key or "-")),
                ev.kind,
                wire(ev.detail, 200),
                f" ({conn!r})" if conn is not None else "",
            )
        outcome = _OUTCOMES.get(ev.kind)
        if outcome:
            self.metrics.vmotions_total.labels(outcome=outcome).inc()
        if ev.kind in _SETTLED:
            self._settled = True
        if ev.kind is sb.EventKind.TAKEOVER_REFUSED and isinstance(conn, EsxConnection):
            conn.refusal = "takeover"
            log.warning("%r: takeover of port %s refused: %s", conn, wire(str(ev.key)), ev.detail)
        if ev.key is None:
            return
        console = self._console(ev.key)
        if isinstance(conn, EsxConnection):
            bound = self.board.port_of(conn)
            if conn.key is None and bound == ev.key:  # first event of this connection here
                console.event(
                    "connect",
                    peer=conn.peer,
                    uuid=conn.raw_uuid or "",
                    name=conn.vm_name or "",
                    tls=_is_tls(conn.stream),
                )
            conn.key = bound
        fields: dict[str, object] = {"detail": ev.detail}
        if isinstance(conn, EsxConnection):
            fields["peer"] = conn.peer
        console.event(str(ev.kind), **fields)
        self._sync_link(ev.key, console)

    async def to_vm(self, key: PortKey, data: bytes) -> None:
        """Console input for the VM of ``key`` (from attached clients), in order."""
        while data:
            room = self.board.to_vm_room(key)
            if room <= 0:
                ev = self._room.setdefault(key, trio.Event())
                await ev.wait()
                continue
            chunk, data = data[:room], data[room:]
            await self._execute(self.board.to_vm(key, chunk))
            carrier = self.board.carrier(key)
            if isinstance(carrier, EsxConnection):
                await carrier.wait_out_room()  # a VM that reads slowly slows its typist

    async def _gc_loop(self) -> None:
        """Freeze what is alive every GC_FREEZE_INTERVAL; a full collection every
        GC_FULL_INTERVAL (see GC_FREEZE_INTERVAL)."""
        full_at = trio.current_time() + GC_FULL_INTERVAL
        while True:
            await trio.sleep(GC_FREEZE_INTERVAL)
            now = trio.current_time()
            if now >= full_at and (
                now >= full_at + GC_QUIET_WAIT or not self.board.pending_vmotions()
            ):
                t0 = time.perf_counter()
                gc.unfreeze()
                found = gc.collect()
                log.info(
                    "full GC: %d unreachable objects, %.0f ms",
                    found,
                    (time.perf_counter() - t0) * 1e3,
                )
                full_at = now + GC_FULL_INTERVAL
            gc.freeze()

    async def _expiry_loop(self) -> None:
        while True:
            self._deadline_changed = trio.Event()
            deadline = self.board.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._deadline_changed.wait()
                continue
            await self._execute(self.board.tick(trio.current_time()))

    # -- liveness: identity deadline, idle probes, takeover probes ----------------
    def _probe(self, conn: EsxConnection) -> None:
        """Ask ``conn`` for proof of life (IAC DO TIMING-MARK) unless a probe is out."""
        if self.liveness.probe(conn, trio.current_time()):
            conn.send_control(conn.session.probe())
            rec = self.liveness.get(conn)
            if rec is not None:
                self._liveness_scheduled(rec.check_at)

    async def probe_answered(self, conn: EsxConnection) -> None:
        """Bytes came from ``conn`` while a probe was out: it is alive."""
        self.liveness.answered(conn)
        if conn.liveness is not None:
            self._liveness_scheduled(conn.liveness.check_at)
        await self._execute(self.board.probe_answered(conn))

    def _liveness_scheduled(self, at: float) -> None:
        if at < self._liveness_wake_at:
            self._liveness_changed.set()

    async def _liveness_loop(self) -> None:
        while True:
            self._liveness_changed = trio.Event()
            deadline = self.liveness.next_deadline()
            self._liveness_wake_at = deadline if deadline is not None else math.inf
            with trio.move_on_at(self._liveness_wake_at):
                await self._liveness_changed.wait()
                continue
            now = trio.current_time()
            for conn, due in self.liveness.tick(now):
                await self._liveness_due(_c(conn), due, now)

    async def _liveness_due(self, conn: EsxConnection, due: Due, now: float) -> None:
        lc = self.config.listen
        if conn.closing:
            return
        if due is Due.PROBE:
            conn.send_control(conn.session.probe())
        elif due is Due.IDENTIFY_TIMEOUT:
            conn.refuse("identify_timeout", f"no VM-VC-UUID within {lc.identify_timeout:g} s")
        elif conn.reading_paused and not peer_gone(conn.stream):
            # Not read (back-pressure): its answer may wait behind its data. Its peer
            # is still connected: alive as far as we can tell (contenders lose).
            self.liveness.spare(conn, now)
            await self._execute(self.board.probe_answered(conn))
        else:
            conn.refuse("idle", f"no answer to a liveness probe within {lc.probe_timeout:g} s")
            await self._execute(self.board.probe_failed(conn, now))


class _InputSink:
    """A console's input sink: ``service.to_vm`` for one port (smaller than a closure)."""

    __slots__ = ("key", "service")

    def __init__(self, service: VspcService, key: PortKey) -> None:
        self.service = service
        self.key = key

    def __call__(self, data: bytes) -> Coroutine[Any, Any, None]:
        return self.service.to_vm(self.key, data)


def _c(conn: object) -> EsxConnection:
    assert isinstance(conn, EsxConnection)
    return conn


_OUTCOMES = {
    "vmotion_complete": "complete",
    "vmotion_abort": "abort",
    "vmotion_expire": "expired",
    "peer_refused": "peer_refused",
}

_SETTLED = {
    sb.EventKind.VMOTION_COMPLETE,
    sb.EventKind.VMOTION_ABORT,
    sb.EventKind.VMOTION_EXPIRE,
}


async def _close_refused(stream: trio.abc.Stream) -> None:
    await trio.aclose_forcefully(stream)


def _liveness_policy(lc: ListenConfig) -> LivenessPolicy:
    return LivenessPolicy(
        identify_timeout=lc.identify_timeout,
        idle_probe=lc.idle_probe,
        probe_timeout=lc.probe_timeout,
    )


def _source_of(peer: str) -> str:
    """The source address of a peer name: the IP of ``ip:port``; a relayed stream's
    ``relay:<host>`` as it is (the relay's host speaks for its streams)."""
    if peer.startswith("relay:"):
        return peer
    return peer.rpartition(":")[0] or peer


def _is_tls(stream: trio.abc.Stream) -> bool:
    return find_layer(stream, trio.SSLStream) is not None


def _peer_name(stream: trio.abc.Stream) -> str:
    s = find_layer(stream, trio.SocketStream)
    if s is None:
        return "?"
    try:
        name = s.socket.getpeername()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name) or "unix"
