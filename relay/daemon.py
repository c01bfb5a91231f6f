"""The relay service: listeners from the config, one pump per admitted stream.

Task layout (outer to inner)::

    service nursery    metrics HTTP, sd_notify watchdog
      streams nursery  one task per live stream (survives reloads; drained on stop)
        listeners      one task per listener, each in its own cancel scope

* ``reload()`` (SIGHUP): listeners whose table is unchanged keep running, changed
  ones are restarted, removed ones stop, new ones start; limits, timeouts and
  egresses apply to new streams. No live stream is touched. A config error keeps
  the running config.
* ``terminate()`` (SIGTERM): stop accepting, give live streams ``timeouts.drain``
  seconds to finish, then cut what is left.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from common.io.listen import listen_error, listening
from common.io.pipepool import PipePool
from common.link.resumable import ResumableStream
from common.ops import sdnotify
from common.ops.config import ConfigError
from common.ops.metrics_http import serve_metrics
from common.proto.identity import name_from
from common.proto.link.frames import ErrorCode
from common.proto.link.header import HeaderError, OriginHeader, encode_header
from relay.config import (
    EgressConfig,
    HvsockListener,
    Listener,
    MetricsConfig,
    PipeListener,
    RelayConfig,
    SerialListener,
    TcpListener,
    VsockListener,
    VspcListener,
    load_config,
)
from relay.core.hybrid import HybridError
from relay.egress import EgressConnection, open_egress
from relay.ingress import Backoff, Origin
from relay.ingress import hvsock as hvsock_ingress
from relay.ingress import pipe as pipe_ingress
from relay.ingress import serialdev as serial_ingress
from relay.ingress import tcp as tcp_ingress
from relay.ingress import vsock as vsock_ingress
from relay.ingress import vspc as vspc_ingress
from relay.limits import Limits, Ticket
from relay.mesh import Mesh
from relay.metrics import COMPLETED, FAILED, RESET, TO_VM, RelayMetrics
from relay.pump import IdleTimeout, PumpCounters, PumpTimeout, pump

log = logging.getLogger("relay")

REFUSE_DRAINING = "draining"
PEER_ROUTE = "peer"  # the metrics route of streams accepted from peer relays

_SERVE: dict[type, Callable[..., Awaitable[None]]] = {
    TcpListener: tcp_ingress.serve,
    VspcListener: vspc_ingress.serve,
    PipeListener: pipe_ingress.serve,
    SerialListener: serial_ingress.serve,
    VsockListener: vsock_ingress.serve,
    HvsockListener: hvsock_ingress.serve,
}

# What dispatch() returns for an admitted stream nobody waits on.
_ADMITTED = trio.Event()
_ADMITTED.set()

# Errors that mean "the egress (or its handshake) failed", not a bug.
_EGRESS_ERRORS = (
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    HybridError,
    HeaderError,
    ssl.SSLError,
)


# A peer session's failure code -> relay_streams_failed_total reason
_SESSION_REASONS: dict[int, str] = {
    ErrorCode.TIMEOUT: "resume_timeout",
    ErrorCode.GAP: "gap",
    ErrorCode.UNKNOWN_SESSION: "unknown_session",
    ErrorCode.PROTOCOL: "protocol",
    ErrorCode.FLOW_CONTROL: "protocol",
    ErrorCode.REFUSED: "refused",
    ErrorCode.INTERNAL: "internal",
}


def _resumables(*streams: trio.abc.Stream) -> tuple[ResumableStream, ...]:
    return tuple(s for s in streams if isinstance(s, ResumableStream))


@dataclass
class _Settling:
    """A stream that has stopped being pumped, until its outcome is counted."""

    stream: trio.abc.Stream  # the VM side (or the peer-link session that brought it)
    conn: EgressConnection | None
    counters: PumpCounters | None
    route: str
    failed: str  # why the relay could not carry it ("" = it did)

    @property
    def resumables(self) -> tuple[ResumableStream, ...]:
        return _resumables(self.stream, *((self.conn.stream,) if self.conn else ()))

    def outcome(self) -> tuple[str, str]:
        """(completed | reset | failed, the failure reason)."""
        if self.failed:
            return FAILED, self.failed
        for r in self.resumables:
            f = r.failure
            if f is not None:
                if f.code == ErrorCode.CANCEL:  # the far end (or its VM) gave up
                    return RESET, ""
                return FAILED, _SESSION_REASONS.get(f.code, "peer_session")
        if self.counters is not None and self.counters.end_reason == "eof":
            return COMPLETED, ""
        return RESET, ""

    def delivered(self) -> tuple[int, int]:
        """Bytes the appliance side and the VM side took (to_appliance, to_vm)."""
        c, conn = self.counters, self.conn
        if c is None or conn is None:
            return 0, 0
        dst = conn.stream
        up = dst.delivered if isinstance(dst, ResumableStream) else c.a_to_b
        down = (
            self.stream.delivered
            if isinstance(self.stream, ResumableStream)
            else c.b_to_a + len(conn.pending)
        )
        return up, down


@dataclass
class _ListenerRun:
    cfg: Listener
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stopped: trio.Event = field(default_factory=trio.Event)
    bound: Any = None
    error: BaseException | None = None


class RelayDaemon:
    """The relay. Run with ``await nursery.start(daemon.run)``; ``run`` returns
    after ``terminate()`` once every stream has finished or been cut."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        config_path: str | Path | None = None,
        registry: CollectorRegistry | None = None,
        pipes: PipePool | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = RelayMetrics(registry)
        self.host = config.origin_host()
        self.pipes = pipes if pipes is not None else PipePool()
        self.metrics_port: int | None = None
        self.accepting = False
        self.limits: Limits | None = None
        self._boot = secrets.token_hex(3)
        self._seq = itertools.count(1)
        self._running: dict[str, _ListenerRun] = {}
        self._egress_by_route: dict[str, EgressConfig] = {}
        self._streams: trio.Nursery | None = None
        self._listeners: trio.Nursery | None = None
        self._reload_lock = trio.Lock()
        self._stopping = False
        self._released: trio.Event | None = None
        self._svc: trio.Nursery | None = None
        self._metrics_scope: trio.CancelScope | None = None
        self._metrics_cfg: MetricsConfig | None = None
        self.stopped = trio.Event()
        self.mesh = Mesh(self.deliver, self.metrics.registry, events=self.metrics)

    # --- public ---------------------------------------------------------------

    @property
    def bound(self) -> dict[str, Any]:
        """Listener name -> what it bound (address tuple or socket path)."""
        return {name: run.bound for name, run in self._running.items()}

    def active_streams(self) -> int:
        return self.limits.active if self.limits is not None else 0

    async def wait_active_at_most(self, n: int) -> None:
        """Return once at most ``n`` streams are live (for tests and tooling)."""
        while self.active_streams() > n:
            if self._released is None:
                self._released = trio.Event()
            await self._released.wait()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        self.limits = Limits(cfg.limits, trio.current_time())
        try:
            async with trio.open_nursery() as svc:
                self._svc = svc
                await self._start_metrics(cfg.metrics)
                interval = sdnotify.watchdog_interval()
                if interval:
                    svc.start_soon(self._watchdog, interval)
                await svc.start(self.mesh.run)
                async with trio.open_nursery() as streams:
                    self._streams = streams
                    async with trio.open_nursery() as listeners:
                        self._listeners = listeners
                        listeners.start_soon(trio.sleep_forever)
                        self.accepting = True
                        errors = await self._apply(cfg)
                        if errors:  # one line naming the key, exit 2 (relay.cli)
                            raise errors[0]
                        log.info(
                            "relay %s ready: %d listeners, metrics port %s",
                            self.host,
                            len(self._running),
                            self.metrics_port,
                        )
                        task_status.started(self)
                        sdnotify.ready()
                log.info("relay drained")
                svc.cancel_scope.cancel()
        finally:
            self.accepting = False
            self.stopped.set()

    async def reload(self, new: RelayConfig | None = None) -> bool:
        """Apply a new config (read from ``config_path`` when not given)."""
        async with self._reload_lock:
            if self._stopping or self._listeners is None:
                log.warning(
                    "reload ignored: %s", "stopping" if self._stopping else "not running yet"
                )
                return False
            sdnotify.reloading()
            try:
                if new is None:
                    if self.config_path is None:
                        raise ConfigError("", "no config file to reload from")
                    new = load_config(self.config_path)
            except ConfigError as e:
                log.error("reload failed, keeping the running config: %s", e)
                self.metrics.reloads.labels("error").inc()
                sdnotify.ready()
                return False
            errors = await self._apply(new)
            try:
                await self._start_metrics(new.metrics)
            except ConfigError as e:
                errors.append(e)
            for err in errors:
                log.error("reload: %s", err)
            self.metrics.reloads.labels("partial" if errors else "ok").inc()
            log.info(
                "reloaded: %d listeners, %d live streams kept",
                len(self._running),
                self.active_streams(),
            )
            sdnotify.ready()
            return not errors

    async def terminate(self) -> None:
        """Stop accepting; drain live streams until ``timeouts.drain`` runs out."""
        if self._stopping:
            return
        self._stopping = True
        self.accepting = False
        sdnotify.stopping()
        drain = self.config.timeouts.drain
        log.info(
            "stopping: no new streams; draining %d live streams (deadline %.1fs)",
            self.active_streams(),
            drain,
        )
        if self._listeners is not None:
            self._listeners.cancel_scope.cancel()
        self.mesh.goaway()
        if self._streams is not None:
            deadline = trio.current_time() + drain
            if self._svc is not None:
                self._svc.start_soon(self._cut_at, deadline)
            else:
                self._streams.cancel_scope.deadline = deadline

    async def _cut_at(self, deadline: float) -> None:
        """The drain deadline: sessions from peers are left, not closed (their
        senders carry them on, here after a restart or elsewhere); then every
        stream still live is cut."""
        await trio.sleep_until(deadline)
        self.mesh.leave_sessions("relay stopped: carry the stream on")
        if self._streams is not None:
            self._streams.cancel_scope.cancel()

    # --- IngressSink ----------------------------------------------------------

    def backoff(self) -> Backoff:
        t = self.config.timeouts
        return Backoff(t.retry_min, t.retry_max)

    async def refuse(self, stream: trio.abc.Stream, origin: Origin, reason: str) -> None:
        self.metrics.refused.labels(origin.route, reason).inc()
        log.warning(
            "route=%s kind=%s vm=%s peer=%s refused: %s",
            origin.route,
            origin.kind,
            origin.vm or "-",
            origin.peer,
            reason,
        )
        await trio.aclose_forcefully(stream)

    async def dispatch(
        self, stream: trio.abc.Stream, origin: Origin, track: bool = False
    ) -> trio.Event | None:
        """Admit and relay ``stream`` (in the streams nursery), or refuse it.
        With ``track`` the returned Event is set when the stream is over."""
        if not self.accepting or self._streams is None or self.limits is None:
            await self.refuse(stream, origin, REFUSE_DRAINING)
            return None
        verdict = self.limits.admit(origin.vm, trio.current_time())
        if not isinstance(verdict, Ticket):
            await self.refuse(stream, origin, verdict)
            return None
        done = trio.Event() if track else None
        self._streams.start_soon(self._relay, stream, origin, verdict, done)
        return done if done is not None else _ADMITTED

    # --- streams --------------------------------------------------------------

    async def _relay(
        self, stream: trio.abc.Stream, origin: Origin, ticket: Ticket, done: trio.Event | None
    ) -> None:
        assert self.limits is not None
        sid = f"{self._boot}-{next(self._seq)}"
        route = origin.route
        egress = self._egress_by_route.get(route) or self.config.default_egress()
        vm = origin.vm or name_from(f"esx-{origin.peer.rsplit(':', 1)[0]}")
        try:
            # (the header is not kept alive for the stream's lifetime)
            await self._carry(
                stream,
                OriginHeader(self.host, vm, origin.kind, origin.label, sid),
                egress,
                route,
                origin.peer,
            )
        finally:
            self._release(ticket, done)

    def deliver(
        self, stream: ResumableStream, header: OriginHeader, egress: str, peer: str
    ) -> None:
        """A stream accepted from a peer relay (sessions end here): on to the appliance
        through the named local egress, with the origin header it arrived with."""
        if not self.accepting or self._streams is None or self.limits is None:
            stream.abort(REFUSE_DRAINING)
            return
        verdict = self.limits.admit(header.vm, trio.current_time())
        if not isinstance(verdict, Ticket):
            self.metrics.refused.labels(PEER_ROUTE, verdict).inc()
            log.warning("route=%s vm=%s peer=%s refused: %s", PEER_ROUTE, header.vm, peer, verdict)
            stream.abort(verdict)
            return
        cfg = self.config.egress.get(egress) if egress else self.config.default_egress()
        self._streams.start_soon(self._relay_accepted, stream, header, cfg, peer, verdict)

    async def _relay_accepted(
        self,
        stream: ResumableStream,
        header: OriginHeader,
        egress: EgressConfig | None,
        peer: str,
        ticket: Ticket,
    ) -> None:
        try:
            if egress is None:  # removed by a reload since the listener started
                log.warning("stream=%s from %s: its egress is gone", header.stream_id, peer)
                stream.abort("no egress")
                return
            await self._carry(stream, header, egress, PEER_ROUTE, peer or "plaintext peer")
        finally:
            self._release(ticket, None)

    def _release(self, ticket: Ticket, done: trio.Event | None) -> None:
        assert self.limits is not None
        self.limits.release(ticket)
        if done is not None:
            done.set()
        if self._released is not None:
            self._released.set()
            self._released = None

    async def _open(self, egress: EgressConfig, header: OriginHeader) -> EgressConnection:
        if egress.kind == "peer":
            st = await self.mesh.open_stream(egress.route, encode_header(header))
            return EgressConnection(st)
        return await open_egress(egress, header)

    async def _carry(
        self,
        stream: trio.abc.Stream,
        header: OriginHeader,
        egress: EgressConfig,
        route: str,
        peer: str,
    ) -> None:
        sid, vm = header.stream_id, header.vm
        t = self.config.timeouts
        counters: PumpCounters | None = None
        conn: EgressConnection | None = None
        failed = ""  # why the relay could not carry the stream ("" = it did)
        try:
            try:
                with trio.fail_after(t.connect):
                    conn = await self._open(egress, header)
            except _EGRESS_ERRORS as e:
                failed = "egress"
                why = (
                    f"no connection or handshake within {t.connect}s"
                    if isinstance(e, trio.TooSlowError)
                    else _reason(e)
                )
                log.warning(
                    "stream=%s route=%s vm=%s peer=%s: egress %s failed: %s",
                    sid,
                    route,
                    vm,
                    peer,
                    egress.kind,
                    why,
                )
                return
            counters = PumpCounters()
            self.metrics.stream_started(
                id(counters), route, counters, _resumables(stream, conn.stream)
            )
            log.info(
                "stream=%s route=%s kind=%s vm=%s label=%s peer=%s: relaying via %s",
                sid,
                route,
                header.kind,
                vm,
                header.label,
                peer,
                f"peer route {egress.route}" if egress.kind == "peer" else egress.kind,
            )
            try:
                if conn.pending:
                    await stream.send_all(conn.pending)
                    self.metrics.add_bytes(route, TO_VM, len(conn.pending))
                await pump(
                    stream,
                    conn.stream,
                    counters=counters,
                    idle_timeout=t.idle or None,
                    stall_timeout=t.stall or None,
                    pipes=self.pipes,
                )
            except PumpTimeout as e:
                failed = "idle" if isinstance(e, IdleTimeout) else "stall"
                log.info("stream=%s route=%s vm=%s closed: %s", sid, route, vm, e)
                return
            except Exception as e:  # a bug or an unexpected error: this stream only
                failed = "error"
                log.error("stream=%s route=%s vm=%s failed: %s", sid, route, vm, _reason(e))
                return
            log.info(
                "stream=%s route=%s vm=%s closed (%s): %d bytes to appliance, %d to vm",
                sid,
                route,
                vm,
                counters.end_reason or "eof",
                counters.a_to_b,
                counters.b_to_a,
            )
        except trio.Cancelled:
            if self._stopping:
                failed = "drain_deadline"
                log.warning("stream=%s route=%s vm=%s cut at the drain deadline", sid, route, vm)
            raise
        finally:
            if counters is not None:
                self.metrics.stream_ended(id(counters))
            self._settle(_Settling(stream, conn, counters, route, failed))
            if failed in ("egress", "error"):  # counted first, then the VM side sees it
                await trio.aclose_forcefully(stream)
                if conn is not None:
                    await trio.aclose_forcefully(conn.stream)

    def _settle(self, st: _Settling) -> None:
        """Count the stream's outcome and delivered bytes once its peer-link sessions
        (if any) have finished delivering what they hold."""
        if st.failed or not st.resumables or self._streams is None:
            self._account(st)
        else:
            self._streams.start_soon(self._account_when_finished, st)

    async def _account_when_finished(self, st: _Settling) -> None:
        for r in st.resumables:
            await r.wait_finished()
        self._account(st)

    def _account(self, st: _Settling) -> None:
        outcome, reason = st.outcome()
        if outcome == FAILED:
            self.metrics.failed.labels(st.route, reason).inc()
        self.metrics.stream_settled(outcome, *st.delivered())

    # --- listeners --------------------------------------------------------------

    async def _apply(self, new: RelayConfig) -> list[ConfigError]:
        """Converge the mesh and the running listeners on ``new``; returns start
        failures, each naming the key of what could not be opened."""
        errors = await self.mesh.apply(new.peer)
        wanted = new.listeners()
        for name, run in list(self._running.items()):
            if wanted.get(name) != run.cfg:
                log.info(
                    "listener %s: %s", name, "changed, restarting" if name in wanted else "removed"
                )
                run.scope.cancel()
                await run.stopped.wait()
                del self._running[name]
        self.config = new
        self.host = new.origin_host()
        if self.limits is not None:
            self.limits.reconfigure(new.limits)
        self._egress_by_route = {name: new.egress_for(lst) for name, lst in wanted.items()}
        for name, lst in wanted.items():
            if name in self._running:
                continue
            run = _ListenerRun(lst)
            assert self._listeners is not None
            run.bound = await self._listeners.start(self._listener_task, run)
            if run.error is not None:
                errors.append(_listener_error(new.listener_key(name), lst, run.error))
                continue
            self.metrics.add_route(name)
            self._running[name] = run
        return errors

    async def _listener_task(self, run: _ListenerRun, *, task_status: Any) -> None:
        started = False

        class _Status:
            def started(self, value: Any = None) -> None:
                nonlocal started
                started = True
                task_status.started(value)

        try:
            with run.scope:
                await _SERVE[type(run.cfg)](run.cfg, self, task_status=_Status())
        except Exception as e:
            run.error = e
            if started:
                log.error("listener %s stopped: %s", run.cfg.name, _reason(e))
                self._running.pop(run.cfg.name, None)
            else:
                task_status.started(None)
        finally:
            run.stopped.set()

    async def _start_metrics(self, mc: MetricsConfig) -> None:
        """(Re)start the metrics HTTP server when its config changed."""
        if mc == self._metrics_cfg or self._svc is None:
            return
        if self._metrics_scope is not None:
            self._metrics_scope.cancel()
            self._metrics_scope = None
            self.metrics_port = None
        self._metrics_cfg = mc
        if not mc.enabled:
            return
        scope = trio.CancelScope()

        async def serve(*, task_status: Any) -> None:
            with scope:
                await serve_metrics(
                    self.metrics.registry, mc.host, mc.port, task_status=task_status
                )

        with listening("metrics.port", host_key="metrics.host", where=f"{mc.host}:{mc.port}"):
            self.metrics_port = await self._svc.start(serve)
        self._metrics_scope = scope

    async def _watchdog(self, interval: float) -> None:
        while True:
            sdnotify.watchdog()
            await trio.sleep(interval)


# Per listener kind: the key of what it binds, and of the host part (if any).
_BIND_KEYS: dict[type, tuple[str, str | None]] = {
    TcpListener: ("port", "host"),
    VspcListener: ("port", "host"),
    PipeListener: ("path", None),
    SerialListener: ("device", None),
    VsockListener: ("port", "bind-cid"),
    HvsockListener: ("uds-path", None),
}


def _listener_error(key: str, lst: Listener, e: BaseException) -> ConfigError:
    """A listener that could not start, as a ConfigError naming its TOML key."""
    field_key, host_field = _BIND_KEYS[type(lst)]
    if isinstance(e, ConfigError):
        return e
    if isinstance(e, OSError):
        return listen_error(
            e,
            f"{key}.{field_key}",
            host_key=f"{key}.{host_field}" if host_field else None,
            where=f"listener {lst.name!r}",
        )
    return ConfigError(f"{key}.{field_key}", f"listener {lst.name!r} cannot start: {_reason(e)}")


def _reason(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
