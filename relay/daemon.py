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
  seconds to finish, then cut what is left (``common.ops.lifecycle``).
* ``hand_off()`` (``handoff-socket``, relay.handoff): a successor took the listening
  sockets; sessions from peers are left (they continue there), live streams on plain
  sockets move to it (relay.pump_handoff), the others drain as with SIGTERM.

A stream's egress, pump and outcome are ``relay.carry``; the listeners, kept or
restarted through ``common.ops.reconcile``, are ``relay.listeners``.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from functools import partial
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from common.io import tlsrefresh
from common.io.certwatch import CertExpiry, watch_files
from common.io.listen import listening
from common.io.pipepool import PipePool
from common.link.resumable import ResumableStream
from common.ops import lifecycle
from common.ops.config import ConfigError
from common.ops.lifecycle import Changed, Lifecycle
from common.ops.metrics_http import serve_metrics
from common.proto.identity import name_from
from common.proto.link.header import OriginHeader
from relay import certreload, handoff
from relay.carry import Carrier
from relay.config import EgressConfig, MetricsConfig, RelayConfig, load_config
from relay.ingress import Backoff, Origin
from relay.limits import Limits, Ticket
from relay.listeners import Listeners
from relay.mesh import Mesh
from relay.metrics import RelayMetrics
from relay.pump_handoff import MOVE_DEADLINE, SendBatch, adopt

log = logging.getLogger("relay")

REFUSE_DRAINING = "draining"
PEER_ROUTE = "peer"  # the metrics route of streams accepted from peer relays

# What dispatch() returns for an admitted stream nobody waits on.
_ADMITTED = trio.Event()
_ADMITTED.set()


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
        self.limits: Limits | None = None
        self.life = Lifecycle()
        self._boot = secrets.token_hex(3)
        self._seq = itertools.count(1)
        self._listeners = Listeners(self)
        self._egress_by_route: dict[str, EgressConfig] = {}
        self._streams: trio.Nursery | None = None
        self._streams_done = trio.Event()
        self._reload_lock = trio.Lock()
        self._released = Changed()
        self._svc: trio.Nursery | None = None
        self._metrics_scope: trio.CancelScope | None = None
        self._metrics_cfg: MetricsConfig | None = None
        self.mesh = Mesh(self.deliver, self.metrics.registry, events=self.metrics)
        self.cert_expiry = CertExpiry("relay", self.metrics.registry)
        self.mesh.routes.config_path = Path(config_path) if config_path is not None else None
        self._carrier = Carrier(self.metrics, self.pipes, self.mesh, self.life)

    # --- public ---------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self.life.accepting

    @property
    def stopped(self) -> trio.Event:
        return self.life.stopped

    @property
    def bound(self) -> dict[str, Any]:
        """Listener name -> what it bound (address tuple or socket path)."""
        return self._listeners.bound

    def readiness(self) -> str | None:
        """For ``/readyz``: None once every configured listener is bound, streams are
        taken (not starting, draining or stopped) and no running listener's last egress
        connect failed (none tried yet: not required); otherwise why not."""
        if not self.life.accepting:
            return self.life.phase.value
        missing = set(self.config.listeners()) - set(self._listeners.running)
        if missing:
            return f"{len(missing)} listener(s) not bound"
        down = [n for n in self._listeners.running if self.metrics.egress_ok.get(n) is False]
        return f"egress unreachable from {len(down)} listener(s)" if down else None

    def active_streams(self) -> int:
        return self.limits.active if self.limits is not None else 0

    async def wait_active_at_most(self, n: int) -> None:
        """Return once at most ``n`` streams are live (for tests and tooling)."""
        await self._released.wait_until(lambda: self.active_streams() <= n)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        self.limits = Limits(cfg.limits, trio.current_time())
        try:
            async with trio.open_nursery() as svc:
                self._svc = svc
                taker = await handoff.take_over(cfg.handoff_socket) if cfg.handoff_socket else None
                await self._start_metrics(cfg.metrics)
                svc.start_soon(lifecycle.watchdog)
                await svc.start(self._watch_certs)
                await svc.start(self.mesh.run)
                async with trio.open_nursery() as streams:
                    self._streams = self._carrier.streams = streams
                    async with trio.open_nursery() as listeners:
                        self._listeners.nursery = listeners
                        listeners.start_soon(trio.sleep_forever)
                        self.life.start_accepting()
                        errors = await self._apply(cfg)
                        if errors:  # one line naming the key, exit 2 (relay.cli)
                            raise errors[0]
                        hserver = await handoff.open_server(cfg.handoff_socket, self.hand_off)
                        log.info(
                            "relay %s ready: %d listeners, metrics port %s",
                            self.host,
                            len(self._listeners.running),
                            self.metrics_port,
                        )
                        task_status.started(self)
                        self.life.ready()
                        if hserver is not None:
                            await handoff.serve(svc, hserver, taker, partial(adopt, self))
                self._streams_done.set()
                log.info("relay drained")
                svc.cancel_scope.cancel()
        finally:
            self.life.finish()

    async def reload(self, new: RelayConfig | None = None) -> bool:
        """Apply a new config (read from ``config_path`` when not given)."""
        async with self._reload_lock:
            if self.life.stopping or self._listeners.nursery is None:
                log.warning(
                    "reload ignored: %s", "stopping" if self.life.stopping else "not running yet"
                )
                return False
            with self.life.reloading():
                return await self._reload(new)

    async def _reload(self, new: RelayConfig | None) -> bool:
        try:
            if new is None:
                if self.config_path is None:
                    raise ConfigError("", "no config file to reload from")
                new = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload failed, keeping the running config: %s", e)
            self.metrics.reloads.labels("error").inc()
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
            len(self._listeners.running),
            self.active_streams(),
        )
        return not errors

    async def hand_off(self, send: SendBatch) -> None:
        """A successor holds our listening sockets and is READY: let go; ``send``
        passes it the live streams that can move."""
        await self.terminate(handoff=True)
        await self._carrier.mover.move(send, handoff.MAX_FDS, trio.current_time() + MOVE_DEADLINE)

    async def terminate(self, *, handoff: bool = False) -> None:
        """Stop accepting; drain live streams until ``timeouts.drain`` runs out.
        With ``handoff`` sessions from peers are left at once."""
        if not self.life.begin_drain(announce=not handoff):
            return
        drain = self.config.timeouts.drain
        log.info(
            "%s: no new streams; draining %d live streams (deadline %.1fs)",
            "handed off" if handoff else "stopping",
            self.active_streams(),
            drain,
        )
        if self._listeners.nursery is not None:
            self._listeners.nursery.cancel_scope.cancel()
        self.mesh.goaway()
        if handoff:  # the successor answers on the sockets we shared from now on
            if self._metrics_scope is not None:
                self._metrics_scope.cancel()
            self.mesh.hand_off("relay handed off: carry the stream on")
        if self._streams is not None and self._svc is not None:
            deadline = trio.current_time() + drain
            self._svc.start_soon(lifecycle.graceful, deadline, self._streams_done.wait, self._cut)

    def _cut(self) -> None:
        """The drain deadline: sessions from peers are left, not closed (their
        senders carry them on, here after a restart or elsewhere); then every
        stream still live is cut."""
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
            await self._carrier.carry(
                stream,
                OriginHeader(self.host, vm, origin.kind, origin.label, sid),
                egress,
                route,
                origin.peer,
                self.config.timeouts,
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
            await self._carrier.carry(
                stream, header, egress, PEER_ROUTE, peer or "plaintext peer", self.config.timeouts
            )
        finally:
            self._release(ticket, None)

    def _release(self, ticket: Ticket, done: trio.Event | None) -> None:
        assert self.limits is not None
        self.limits.release(ticket)
        if done is not None:
            done.set()
        self._released.notify()

    # --- listeners --------------------------------------------------------------

    async def _apply(self, new: RelayConfig) -> list[ConfigError]:
        """Converge the mesh and the running listeners on ``new``; returns start
        failures, each naming the key of what could not be opened."""
        tlsrefresh.refresh()  # listeners' and egress contexts follow their files
        errors = await self.mesh.apply(new.peer)
        wanted = new.listeners()
        plan = self._listeners.plan(wanted)
        await self._listeners.stop(plan)
        self.config = new
        self.host = new.origin_host()
        if self.limits is not None:
            self.limits.reconfigure(new.limits)
        self._egress_by_route = {name: new.egress_for(lst) for name, lst in wanted.items()}
        errors += await self._listeners.start(plan, new.listener_key, self.metrics.add_route)
        self.cert_expiry.update(certreload.cert_keys(new))
        return errors

    async def _watch_certs(self, *, task_status: Any) -> None:
        """Reload (with the running config) when a certificate, key, CA or CRL changes."""
        await watch_files(
            lambda: certreload.watched_paths(self.config),
            lambda: self.reload(self.config),
            task_status=task_status,
        )

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
                    self.metrics.registry,
                    mc.host,
                    mc.port,
                    ready=self.readiness,
                    task_status=task_status,
                )

        with listening("metrics.port", host_key="metrics.host", where=f"{mc.host}:{mc.port}"):
            self.metrics_port = await self._svc.start(serve)
        self._metrics_scope = scope
