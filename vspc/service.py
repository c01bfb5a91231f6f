"""The vSPC service: ESX Telnet listeners, the switchboard adapter, consoles.

The sans-IO ``Switchboard`` (vspc.core.switchboard) decides which connection
carries each VM serial port and runs the vMotion state machine; this service
only feeds it events, executes the actions it returns, and keeps time. Its parts:
the listeners (``vspc.esx_listener``), the meaning of ESX session events
(``vspc.esx_events``), carrying out the switchboard's actions
(``vspc.action_runner``), console backlogs (``vspc.backlog``) and the GC policy
(``vspc.gcpolicy``); this module holds the lifecycle, connections and liveness.

Nothing an ESX connection's reader does waits on a console, a client or the
disk: console bytes go into a per-port backlog drained by a short-lived task
(in port order, so a vMotion source's bytes still come before the
destination's), and the reader stops reading only when that backlog passes
``backlogs.console_backlog_bytes``. So VMOTION-BEGIN is answered as soon as it is read.

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

import logging
import math
import os
from collections.abc import Callable, Coroutine
from dataclasses import replace
from functools import partial
from typing import Any

import trio

from common.io import tlsrefresh
from common.io.certwatch import CertExpiry
from common.ops import lifecycle
from common.ops.config import ConfigError
from common.ops.wiretext import wire
from vspc import certreload, esx_parking, loopwatch
from vspc.action_runner import ActionRunner
from vspc.backlog import Backlog, ConsoleBacklogs
from vspc.config import ListenConfig, VspcConfig
from vspc.console.hub import Link
from vspc.console.service import ConsoleService
from vspc.core import switchboard as sb
from vspc.core.identity import PortKey
from vspc.core.liveness import Due, LivenessPolicy, LivenessTable
from vspc.docker.server import DockerServer
from vspc.esx_conn import CLOSE_FLUSH_SECONDS, EsxConnection
from vspc.esx_events import SessionEvents
from vspc.esx_listener import EsxListeners, peer_gone, source_of
from vspc.gcpolicy import gc_loop, gc_policy
from vspc.metrics import VspcMetrics
from vspc.service_shape import Server, as_esx
from vspc.sessions.setup import session_service

__all__ = ["VspcService"]

log = logging.getLogger("vspc")


class VspcService(EsxListeners, SessionEvents, ActionRunner):
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
        self.sessions = session_service(config.sessions, self.consoles)  # None: disabled
        self.docker = (  # the Docker Engine API endpoint (issue 14); None: disabled
            DockerServer(config.docker, self.sessions, metrics=self.metrics)
            if config.docker.enabled
            else None
        )
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
        self._secret_source = secret_source
        self._conns: set[EsxConnection] = set()
        self._conns_changed = trio.Event()
        self._links: dict[PortKey, Link] = {}  # ports whose console has this service's link
        self._deadline_changed = trio.Event()
        self._room: dict[PortKey, trio.Event] = {}
        self._displays: dict[PortKey, str] = {}
        self.backlogs = ConsoleBacklogs(self.consoles, self._console)
        # Set by the endpoint when [endpoint.vcenter] is configured: why the relay on
        # `host` may not speak for VM `raw_uuid` (None: it may).
        self.relayed_vm_check: Callable[[str, str], Coroutine[Any, Any, str | None]] | None = None
        self._tasks: trio.Nursery | None = None
        self._handlers: trio.Nursery | None = None
        self._parking: esx_parking.Parking | None = None  # (VIC_VSPC_PARK=0: None)
        self._listener: Server | None = None
        self._metrics_server: Server | None = None
        self._draining = False
        self.esx_port: int | None = None
        self.metrics_port: int | None = None
        # vspc_connected_vms: the ESX ports with a carrier are added here as they
        # change (O(1), never a scan of every port); raw streams relayed through the
        # endpoint add themselves.
        self._carried = 0
        self._bytes_to_vm = self.metrics.bytes_total.labels(direction="appliance_to_vm")
        self._bytes_from_vm = self.metrics.bytes_total.labels(direction="vm_to_appliance")
        self.cert_expiry = CertExpiry("vspc", self.metrics.registry)
        self.cert_expiry.update(certreload.cert_keys(config))

    @property
    def _backlogs(self) -> dict[PortKey, Backlog]:
        """Console bytes still on their way to the consoles, per port."""
        return self.backlogs.by_port

    @property
    def _backlog_gone(self) -> trio.Event:
        """Set (and replaced) as each backlog empties."""
        return self.backlogs.gone

    # -- lifecycle ---------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Open every listener (a failure raises ConfigError naming the key, before
        anything is logged), then serve until cancelled or drained."""
        watch = loopwatch.install(self.metrics.registry)  # None unless VIC_VSPC_LOOPWATCH
        try:
            await self._run(task_status)
        finally:
            loopwatch.uninstall(watch, self.metrics.registry)

    async def _run(self, task_status: Any) -> None:
        with gc_policy():
            async with trio.open_nursery() as nursery:
                self._tasks = self.backlogs.nursery = nursery
                async with trio.open_nursery() as handlers:
                    self._handlers = handlers
                    if esx_parking.enabled():
                        self._parking = esx_parking.Parking(self, self._unparked)
                        handlers.start_soon(self._parking.run)
                    self._listener = await self._start_listening(self.config.listen, quiet=True)
                    if self.config.metrics.enabled:
                        self._metrics_server = await self._start_metrics(
                            self.config.metrics, quiet=True
                        )
                    await nursery.start(self.consoles.run)
                    if self.sessions is not None:
                        await nursery.start(self.sessions.run)
                    if self.docker is not None:
                        await nursery.start(self.docker.run)
                    nursery.start_soon(self._expiry_loop)
                    await nursery.start(certreload.watch, self)
                    nursery.start_soon(self._liveness_loop)
                    nursery.start_soon(gc_loop, self.board)
                    self._log_listening(self.config.listen)
                    if self._metrics_server is not None:
                        self._log_metrics(self.config.metrics)
                    task_status.started(self)
                nursery.cancel_scope.cancel()

    async def drain(self, deadline: float) -> None:
        """Stop accepting; give live connections until ``deadline`` to finish.

        Then the remaining ESX connections are closed (after flushing what is
        queued for them) and the console logs are flushed. Returns when done.
        """
        self._draining = True
        await self.stop_listening()
        if self.docker is not None:
            await self.docker.stop_listening()
        gone = partial(lifecycle.wait_until, lambda: not self._conns, lambda: self._conns_changed)
        if not await lifecycle.graceful(deadline, gone, lambda: None):
            for conn in list(self._conns):
                conn.close_soon("vSPC shutting down")
            with trio.move_on_after(CLOSE_FLUSH_SECONDS + 1.0):
                await gone()
        with trio.move_on_after(5.0):  # console bytes still on their way to the consoles
            await lifecycle.wait_until(lambda: not self._backlogs, lambda: self._backlog_gone)
            await self.consoles.writer.flush()
            if self.sessions is not None:
                await self.sessions.logs.flush()  # the container logs too
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
        if config.docker != old.docker and self.docker is not None and not self._draining:
            from vspc.docker.reload import reconfigure  # only where [docker] is on

            config = replace(config, docker=await reconfigure(self.docker, config.docker))
            self.config = config  # what is in force (a listener that failed: the old)
        elif config.docker != old.docker:
            log.warning("reload: [docker] changes only at restart")
        self._deadline_changed.set()
        await self.consoles.reconfigure(config.console)
        tlsrefresh.refresh()  # every TLS context re-reads changed certificate files
        self.cert_expiry.update(certreload.cert_keys(config))
        log.info("configuration reloaded")

    # -- connections ---------------------------------------------------------------
    def handle_esx_stream(
        self, stream: trio.abc.Stream, peer: str, *, park: bool = False
    ) -> Coroutine[Any, Any, None]:
        """Serve one ESX Telnet stream (direct, or relayed through the endpoint).

        ``await service.handle_esx_stream(stream, peer)``: the connection is
        registered by the call, and served by the coroutine it returns (await it at once).
        ``park``: the coroutine may end while the connection stays open (the listener's
        own streams: the parking watcher reads them while idle, vspc.esx_parking).
        """
        conn = EsxConnection(stream, peer, self.config.proxy_accepts)
        if park:
            conn.parking = self._parking
        self._conns.add(conn)
        self._changed()
        self.metrics.esx_connections.inc()
        self.board.connection_opened(conn, source_of(peer))
        conn.liveness = self.liveness.opened(conn, trio.current_time())
        self._liveness_scheduled(conn.liveness.check_at)
        log.info("%r: connected", conn)
        return conn.run(self)

    def _unparked(self, conn: esx_parking.ParkedReads) -> None:
        assert self._handlers is not None and isinstance(conn, EsxConnection)
        self._handlers.start_soon(conn.run, self, name="esx")

    def _changed(self) -> None:
        self._conns_changed.set()
        self._conns_changed = trio.Event()

    async def connection_closed(self, conn: EsxConnection) -> None:
        self._conns.discard(conn)
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
        return self.backlogs.admits(key, conn)

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
                await self._liveness_due(as_esx(conn), due, now)

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


def _liveness_policy(lc: ListenConfig) -> LivenessPolicy:
    return LivenessPolicy(
        identify_timeout=lc.identify_timeout,
        idle_probe=lc.idle_probe,
        probe_timeout=lc.probe_timeout,
    )
