"""Routes to the appliance and the ``Router`` that keeps one peer link per route.

A route names where resumable streams go: the appliance endpoint itself or a
peer relay that delivers into it. Addresses::

    tcp:HOST:PORT      (IPv6: tcp:[::1]:PORT)
    unix:/path/to/socket
    vsock:CID:PORT

A route is TLS (mutual, TLS 1.3, the peer's ``vic://`` identity checked) unless
``tls = false``, which is only for a trusted transport such as vsock inside one
host. ``Router.set_route()`` switches at runtime: every live stream leaves its
current link and resumes over the new route, without loss; the old link is sent
GOAWAY and closed once empty.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from common.link import tls as tlsmod
from common.link.events import NO_EVENTS, LinkEvents
from common.link.peerlink import LinkConfig, LinkDeadError, PeerLink
from common.link.replay import ReplayPool
from common.link.resumable import ResumableStream
from common.link.route_health import RouteHealth
from common.proto.address import (
    AddressError,
    is_loopback_host,
    is_trusted_address,
    parse_address,
)

log = logging.getLogger("relay.route")


#: A route's address or identity is wrong (one error type with the address grammar's).
RouteError = AddressError


@dataclass(frozen=True)
class Route:
    address: str
    identity: str = ""  # expected vic:// identity of the peer (required with TLS)
    tls: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        parse_address(self.address)
        if self.tls and not self.identity.startswith("vic://"):
            raise RouteError(
                "a TLS route needs the peer identity (vic://host/NAME or vic://appliance/NAME)"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "identity": self.identity,
            "tls": self.tls,
        }


async def open_transport(address: str) -> trio.abc.Stream:
    kind, where = parse_address(address)
    if kind == "tcp":
        return await trio.open_tcp_stream(*where)
    if kind == "unix":
        return await trio.open_unix_socket(where)
    sock = trio.socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        await sock.connect(where)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def connect_route(
    route: Route,
    ctx: ssl.SSLContext | None,
    handshake_timeout: float = 10.0,
    events: LinkEvents = NO_EVENTS,
    quiet: bool = False,
) -> tuple[trio.abc.Stream, str]:
    """Open the transport for ``route`` and, for TLS, authenticate the peer (a
    refusal is reported to ``events`` and logged with the peer's address, at
    DEBUG when ``quiet``: the route is known to be down)."""
    stream = await open_transport(route.address)
    if not route.tls:
        return stream, ""
    if ctx is None:
        await trio.aclose_forcefully(stream)
        raise RouteError("TLS route but no certificate configured")
    where = tlsmod.remote_address(stream)
    try:
        with trio.fail_after(handshake_timeout):
            return await tlsmod.handshake(stream, ctx, server_side=False, expected={route.identity})
    except tlsmod.HANDSHAKE_ERRORS as e:
        reason = tlsmod.refusal_reason(e)
        events.tls_refused(reason)
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "route %s: refused peer link to %s (%s): %s",
            route.name or route.address,
            where,
            reason,
            e or type(e).__name__,
        )
        raise


class Router:
    """Keeps one link for the current route and opens resumable streams over it."""

    def __init__(
        self,
        route: Route,
        nursery: trio.Nursery,
        *,
        tls_files: tlsmod.TlsFiles | None = None,
        config: LinkConfig | None = None,
        name: str = "ingress",
        events: LinkEvents = NO_EVENTS,
        health: RouteHealth | None = None,
    ) -> None:
        self.config = config or LinkConfig()
        self.health = health if health is not None else RouteHealth(name)
        self._route = route
        self._nursery = nursery
        self._ctx = tlsmod.client_context(tls_files) if tls_files is not None else None
        self._link: PeerLink | None = None
        self._link_route: Route | None = None
        self._lock = trio.Lock()
        self.streams: set[ResumableStream] = set()
        self.pool = ReplayPool(self.config.replay_pool, self.config.replay_reserve)
        self.name = name
        self.events = events
        self.links_opened = 0
        self.route_changes = 0

    @property
    def route(self) -> Route:
        return self._route

    @property
    def link(self) -> PeerLink | None:
        return self._link

    def set_tls(self, tls_files: tlsmod.TlsFiles | None) -> None:
        """New certificates (reload): used for the next link; a live link to a peer
        whose certificate the CA's CRL now revokes is closed."""
        self._ctx = tlsmod.client_context(tls_files) if tls_files is not None else None
        link = self._link
        if tls_files is not None and link is not None and tlsmod.is_revoked(link, tls_files):
            log.warning(
                "route %s: closing the link to %s: its certificate is revoked",
                self.name,
                link.peer_identity,
            )
            self.events.tls_refused("revoked")
            link.close("peer certificate revoked")

    async def get_link(self) -> PeerLink:
        async with self._lock:
            while True:
                link = self._link
                if (
                    link is not None
                    and link.alive
                    and not link.draining
                    and self._link_route == self._route
                ):
                    return link
                route = self._route
                transport, ident = await self._connect(route)
                link = PeerLink(
                    transport,
                    client=True,
                    config=self.config,
                    name=f"{self.name}->{route.name or route.address}",
                    peer_identity=ident,
                    on_rtt=partial(self.events.link_rtt, self.name, outgoing=True),
                )
                await self._nursery.start(self._run_link, link, tlsmod.remote_address(transport))
                self.links_opened += 1
                if route != self._route:  # re-routed while we were connecting
                    link.close("route changed while connecting")
                    continue
                self._link, self._link_route = link, route
                log.info("link up: %s (%s)", link.name, ident or "plaintext")
                return link

    async def _connect(self, route: Route) -> tuple[trio.abc.Stream, str]:
        health = self.health
        try:
            got = await connect_route(route, self._ctx, events=self.events, quiet=not health.up)
        except Exception as e:
            health.failed(route.address, e, trio.current_time())
            raise
        health.succeeded(route.address, trio.current_time())
        return got

    async def _run_link(self, link: PeerLink, where: str, *, task_status: Any) -> None:
        await link.run(task_status=task_status)
        if link.cut:
            self.events.link_cut()
        elif link.peer_identity and not link.conn.ready and link.error is not None:
            # TLS 1.3: the server checks our certificate after our side of the
            # handshake is done; its refusal arrives as an alert on the first read
            reason = tlsmod.refusal_reason(link.error)
            if reason == "refused_by_peer":
                self.events.tls_refused(reason)
                log.warning(
                    "route %s: peer %s refused our certificate: %s", self.name, where, link.error
                )

    def link_failed(self, link: PeerLink) -> None:
        if self._link is link:
            self._link = None

    def set_route(self, route: Route) -> None:
        """Switch to ``route``: live streams move to it and resume."""
        if route == self._route:
            return
        log.info("route %s: %s -> %s", self.name, self._route.address, route.address)
        self._route = route
        self.route_changes += 1
        old, self._link = self._link, None
        for st in list(self.streams):
            st.move("route changed")
        if old is not None:
            old.goaway("route changed")
            self._nursery.start_soon(self._retire, old)

    async def _retire(self, link: PeerLink, grace: float = 5.0) -> None:
        # every stream was moved off (RESET SUPERSEDED): give those frames a moment
        # to reach the peer, then close
        with trio.move_on_after(grace):
            await link.barrier()
        link.close("retired after route change")

    async def open_stream(self, header: bytes) -> ResumableStream:
        """A new resumable stream carrying ``header`` (the origin header bytes)."""
        st = ResumableStream(
            os.urandom(16), header, self.config, opener=True, connector=self, pool=self.pool
        )
        self.streams.add(st)
        st.on_finished = self.streams.discard
        self._nursery.start_soon(st.run)
        await trio.lowlevel.checkpoint()
        return st

    def close(self) -> None:
        if self._link is not None:
            self._link.close("router closed")
            self._link = None


__all__ = [
    "LinkDeadError",
    "Route",
    "RouteError",
    "Router",
    "connect_route",
    "is_loopback_host",
    "is_trusted_address",
    "parse_address",
]
