"""The relay daemon's part in the peer mesh: everything under ``[peer]``.

* **routes** (``[peer.routes.NAME]``, relay.mesh_routes): one ``Router`` each, one
  link per route; an egress with ``kind = "peer"`` opens resumable streams over it.
  A reload, ``vic relay route set|reset`` (admin socket: an override, see
  relay.route_state) or ``[peer.follow.NAME]`` (vCenter) re-points a router: its
  live streams move to the new path and resume there.
* **listeners** (``[[peer.listen]]``): accept peer links, TLS with the peer's
  identity checked (or plaintext on a trusted transport). Either the sessions end
  here, every stream's origin header is checked against the peer's identity and
  the stream goes on through a local egress (``RelayDaemon.deliver``); or, with
  ``forward``, the whole link goes on to the appliance's link endpoint, prefixed
  by the peer's identity (``common.proto.link.forwarded``), so sessions end at the
  appliance and survive it moving between hosts.

Links and the sessions they carry run in the mesh nursery, which lives as long
as the daemon; stream pumps run in the daemon's streams nursery (drained on
SIGTERM, when every accepted link is also sent GOAWAY).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from common.io.listen import listening
from common.link import tls as tlsmod
from common.link.config import (
    PeerConfig,
    PeerListen,
    bound_address,
    open_peer_listener,
)
from common.link.events import NO_EVENTS, LinkEvents
from common.link.peering import LinkServer, accept_tls
from common.link.peerlink import LinkConfig
from common.link.resumable import ResumableStream
from common.link.route import Router, open_transport
from common.link.sessions import Accepted, SessionTable
from common.link.vetting import vet_accepted
from common.ops.config import ConfigError
from common.ops.reconcile import diff, indexed, same_item, start_all
from common.ops.wiretext import wire
from common.proto.address import parse_forward
from common.proto.link.forwarded import encode_preamble
from common.proto.link.header import (
    OriginHeader,
)
from relay.core.hybrid import HybridError
from relay.egress import hybrid_connect
from relay.mesh_routes import MeshRoutes
from relay.metrics_links import PeerLinkCollector
from relay.pump import pump

log = logging.getLogger("relay.mesh")


_SAME_TLS: Any = object()  # _apply_listens: the certificates did not change


def _address(pl: PeerListen) -> str:
    return pl.address


# (accepted stream, its decoded origin header, name of the egress to use)
DeliverFn = Callable[[ResumableStream, OriginHeader, str, str], None]


@dataclass
class _ListenRun:
    cfg: PeerListen
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stopped: trio.Event = field(default_factory=trio.Event)
    server: LinkServer | None = None
    bound: Any = None


class Mesh:
    def __init__(
        self,
        deliver: DeliverFn,
        registry: CollectorRegistry | None = None,
        events: LinkEvents = NO_EVENTS,
    ) -> None:
        self._deliver = deliver
        self.events = events
        self.config = PeerConfig()
        self._tables: dict[str, SessionTable] = {}
        self._listens: dict[tuple[str, int], _ListenRun] = {}
        self._follows: dict[str, tuple[Any, trio.CancelScope]] = {}
        self._admin: tuple[Any, trio.CancelScope] | None = None  # (path, its scope)
        self._nursery: trio.Nursery | None = None
        self._link_config = LinkConfig()
        self._tls_stamp: tuple[tuple[int, int, int], ...] = ()
        self._forwarders: set[trio.abc.Stream] = set()
        r = registry if registry is not None else CollectorRegistry()
        self.routes = MeshRoutes(r, events)
        self.routers: dict[str, Router] = self.routes.routers
        self.links = Gauge("relay_peer_links", "open peer links", ["side"], registry=r)
        self.links.labels("out").set_function(
            lambda: sum(1 for x in self.routers.values() if x.link is not None and x.link.alive)
        )
        self.links.labels("in").set_function(
            lambda: (
                sum(len(x.server.links) for x in self._listens.values() if x.server is not None)
                + len(self._forwarders)
            )
        )
        r.register(PeerLinkCollector(self.routers))  # RTT, reconnects
        self.refused = Counter(
            "relay_peer_streams_refused",
            "streams from peers refused (bad or foreign origin header)",
            registry=r,
        )
        self.route_changes = self.routes.route_changes

    # --- lifecycle ----------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    def bound(self) -> list[Any]:
        return [x.bound for x in self._listens.values()]

    async def apply(self, peer: PeerConfig | None) -> list[ConfigError]:
        """Converge on ``peer`` (reload-safe); returns what could not start, each
        error naming its key."""
        assert self._nursery is not None
        new = peer if peer is not None else PeerConfig()
        if new.tls is not None:
            try:
                new.tls.check_loads("peer.tls")
            except ConfigError as e:
                return [e]  # nothing changes: the running mesh keeps its certificates
        old, self.config = self.config, new
        self._link_config = new.link.link_config()
        files = new.tls.files() if new.tls is not None else None
        stamp, self._tls_stamp = self._tls_stamp, tlsmod.files_stamp(files)
        tls_changed = old.tls != new.tls or stamp != self._tls_stamp  # paths or contents
        self.routes.apply(self._nursery, old, new, files, self._link_config, tls_changed)
        errors = await self._apply_listens(new, files if tls_changed else _SAME_TLS)
        errors += await self._apply_admin(new)
        self._apply_follows(new)
        return errors

    async def _apply_listens(self, new: PeerConfig, files: Any) -> list[ConfigError]:
        """Peer listeners: kept (with new certificates when ``files`` is not
        ``_SAME_TLS``) while their table is unchanged, else stopped and started."""
        running = {k: (0, run.cfg) for k, run in self._listens.items()}
        plan = diff(running, indexed(new.listen, _address), same=same_item)
        for k in plan.keep:
            run = self._listens[k]
            if run.server is not None and files is not _SAME_TLS:
                run.server.reconfigure(
                    tls_files=files if run.cfg.tls else None,
                    allowed_peers=run.cfg.allowed_peers,
                )
        for k in plan.stop:
            run = self._listens.pop(k)
            log.info("peer listener %s removed", run.cfg.address)
            run.scope.cancel()
            await run.stopped.wait()

        async def start(k: tuple[str, int], spec: tuple[int, PeerListen]) -> None:
            assert self._nursery is not None
            i, pl = spec
            with listening(f"peer.listen[{i}].address", where=pl.address):
                self._listens[k] = await self._nursery.start(self._listen, pl)

        return await start_all(plan.start, start)

    async def _apply_admin(self, new: PeerConfig) -> list[ConfigError]:
        """The admin socket: restarted when its path changed (or it failed to start)."""
        path = new.admin_socket
        running = {} if self._admin is None else {"admin": self._admin[0]}
        plan = diff(running, {} if path is None else {"admin": path})
        if plan.stop and self._admin is not None:
            self._admin[1].cancel()
            self._admin = None

        async def start(_key: str, path: Any) -> None:
            assert self._nursery is not None
            scope = trio.CancelScope()
            with listening("peer.admin-socket", where=str(path)):
                await self._nursery.start(self.routes.serve_admin, path, scope)
            self._admin = (path, scope)

        return await start_all(plan.start, start)

    def _apply_follows(self, new: PeerConfig) -> None:
        """vSphere follow: restarted when changed; started once its route runs."""
        assert self._nursery is not None
        plan = diff({name: f for name, (f, _) in self._follows.items()}, new.follow)
        for name in plan.stop:
            self._follows.pop(name)[1].cancel()
        for name, fcfg in plan.start:
            if name in self.routers:
                scope = trio.CancelScope()
                self._follows[name] = (fcfg, scope)
                self._nursery.start_soon(self.routes.follow, name, fcfg, scope)

    def goaway(self) -> None:
        """SIGTERM: accepted links get GOAWAY (no new streams); forwarders stop accepting."""
        for run in self._listens.values():
            run.scope.cancel()
            if run.server is not None:
                run.server.goaway_all("relay stopping")

    def hand_off(self, reason: str) -> None:
        """A successor process serves our sockets now (relay.handoff): the admin
        socket stops here, sessions are left to their senders and forwarded links
        are closed (their streams resume end to end through the successor)."""
        if self._admin is not None:
            self._admin[1].cancel()
            self._admin = None
        self.leave_sessions(reason)
        assert self._nursery is not None
        for stream in list(self._forwarders):
            self._nursery.start_soon(trio.aclose_forcefully, stream)

    def leave_sessions(self, reason: str) -> None:
        """The drain's end: sessions that end here are left to their senders."""
        for table in self._tables.values():
            table.leave_all(reason)

    # --- ingress side ---------------------------------------------------------------

    async def open_stream(self, route: str, header: bytes) -> ResumableStream:
        router = self.routers.get(route)
        if router is None:
            raise OSError(f"no peer route {route!r}")
        return await router.open_stream(header)

    # --- listeners ---------------------------------------------------------------------

    async def _listen(self, pl: PeerListen, *, task_status: Any) -> None:
        run = _ListenRun(pl)
        try:
            with run.scope:
                listener = await open_peer_listener(pl.address)
                run.bound = bound_address(listener)
                files = self.config.tls.files() if (pl.tls and self.config.tls) else None
                if pl.forward:
                    ctx = tlsmod.server_context(files) if files is not None else None
                    handler: Callable[[trio.abc.Stream], Any] = partial(
                        self._forward, pl=pl, ctx=ctx
                    )
                else:
                    table = self._table(pl.egress)
                    run.server = LinkServer(
                        table,
                        tls_files=files,
                        allowed_peers=pl.allowed_peers,
                        config=self._link_config,
                        name=f"peer-listen {pl.address}",
                        events=self.events,
                    )
                    handler = run.server.handle
                log.info(
                    "peer listener %s (%s, %s)",
                    pl.address,
                    "TLS" if pl.tls else "plaintext",
                    f"forward to {pl.forward}"
                    if pl.forward
                    else f"deliver via egress {pl.egress or 'default'}",
                )
                task_status.started(run)
                assert self._nursery is not None
                await trio.serve_listeners(handler, [listener], handler_nursery=self._nursery)
        finally:
            run.stopped.set()

    def _table(self, egress: str) -> SessionTable:
        table = self._tables.get(egress)
        if table is None:
            assert self._nursery is not None
            table = SessionTable(self._nursery, self._link_config)
            self._tables[egress] = table
            self._nursery.start_soon(self._accept_loop, table, egress)
        return table

    async def _accept_loop(self, table: SessionTable, egress: str) -> None:
        async for acc in table:
            self._accepted(acc, egress)

    def _accepted(self, acc: Accepted, egress: str) -> None:
        header = vet_accepted(acc, self.events)
        if header is None:
            self.refused.inc()
            return
        self._deliver(acc.stream, header, egress, acc.peer_identity)

    async def _forward(
        self, stream: trio.abc.Stream, pl: PeerListen, ctx: ssl.SSLContext | None
    ) -> None:
        ident = ""
        try:
            if ctx is not None:
                accepted = await accept_tls(
                    stream,
                    ctx,
                    pl.allowed_peers,
                    timeout=10,
                    events=self.events,
                    who=f"peer-listen {pl.address}",
                    logger=log,
                )
                if accepted is None:
                    return
                stream, ident = accepted
            with trio.fail_after(10):
                conn, pending = await open_forward(pl.forward)
        except (trio.TooSlowError, trio.BrokenResourceError, OSError, HybridError) as e:
            log.warning(
                "peer link on %s from %s not forwarded: %s",
                pl.address,
                wire(ident or "plaintext peer"),
                wire(str(e)),
            )
            await trio.aclose_forcefully(stream)
            return
        log.info("forwarding link from %s to %s", wire(ident or "plaintext peer"), pl.forward)
        self._forwarders.add(stream)
        try:
            await conn.send_all(encode_preamble(ident))
            if pending:
                await stream.send_all(pending)
            await pump(stream, conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.info("forwarded link from %s ended: %s", wire(ident or "plaintext peer"), e)
        finally:
            self._forwarders.discard(stream)
            await trio.aclose_forcefully(stream)
            await trio.aclose_forcefully(conn)
        log.info("forwarded link from %s closed", wire(ident or "plaintext peer"))


async def open_forward(address: str) -> tuple[trio.abc.Stream, bytes]:
    """Connect to where a forwarding listener passes its links; returns the stream
    and any bytes that came with a hybrid-vsock ``OK`` line."""
    kind, where = parse_forward(address)
    if kind == "hvsock":
        assert isinstance(where, tuple)
        conn = await hybrid_connect(str(where[0]), int(where[1]))
        return conn.stream, conn.pending
    return await open_transport(address), b""
