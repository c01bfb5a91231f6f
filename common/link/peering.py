"""The accepting side of peer links: TLS handshake, identity check, one PeerLink each.

All links of one ``LinkServer`` share its ``SessionTable``, so a stream that
resumes over a new connection (after a cut, or from another relay after a route
change) finds its session. Accepted streams come out of ``server.table.accept()``
as ``Accepted(stream, header, peer_identity)``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

from common.io import revocation, tlsrefresh
from common.io.certs import CertError
from common.link import tls as tlsmod
from common.link.events import NO_EVENTS, LinkEvents
from common.link.peerlink import LinkConfig, PeerLink
from common.link.sessions import SessionTable
from common.ops.wiretext import wire

log = logging.getLogger("relay.peering")


async def accept_tls(
    stream: trio.abc.Stream,
    ctx: ssl.SSLContext,
    allowed: Collection[str],
    *,
    timeout: float,
    events: LinkEvents,
    who: str,
    logger: logging.Logger = log,
) -> tuple[trio.abc.Stream, str] | None:
    """The server side of a peer link's TLS handshake: the authenticated stream and
    the peer's identity, or None for a refused peer (counted in ``events`` by reason,
    logged as ``who``'s with the peer's address, its connection closed)."""
    where = tlsmod.remote_address(stream)
    try:
        with trio.fail_after(timeout):
            return await tlsmod.handshake(stream, ctx, server_side=True, expected=allowed)
    except tlsmod.HANDSHAKE_ERRORS as e:
        reason = tlsmod.refusal_reason(e)
        events.tls_refused(reason)
        logger.warning(
            "%s: refused peer link from %s (%s): %s",
            who,
            where,
            reason,
            wire(str(e) or type(e).__name__),
        )
        await trio.aclose_forcefully(stream)
        return None


class LinkServer:
    def __init__(
        self,
        table: SessionTable,
        *,
        tls_files: tlsmod.TlsFiles | None,
        allowed_peers: Collection[str] = (),
        config: LinkConfig | None = None,
        handshake_timeout: float = 10.0,
        name: str = "egress",
        events: LinkEvents = NO_EVENTS,
    ) -> None:
        self.table = table
        self.config = config or table.config
        self._ctx: ssl.SSLContext | None = (
            tlsmod.server_context(tls_files) if tls_files is not None else None
        )
        self.allowed_peers = frozenset(allowed_peers)
        self.handshake_timeout = handshake_timeout
        self.name = name
        self.events = events
        self.links: set[PeerLink] = set()
        self._serials: dict[PeerLink, int] = {}  # of each link's peer certificate
        self._ca = tls_files.ca if tls_files is not None else None
        self.refused = 0
        tlsrefresh.subscribe(self)  # a reload anywhere in the daemon checks the CRL

    def reconfigure(
        self, *, tls_files: tlsmod.TlsFiles | None, allowed_peers: Collection[str]
    ) -> None:
        """Reload: new certificates and peers apply to new links; live links of
        peers whose certificate the CA's CRL now revokes are closed."""
        self._ctx = tlsmod.server_context(tls_files) if tls_files is not None else None
        self.allowed_peers = frozenset(allowed_peers)
        self._ca = tls_files.ca if tls_files is not None else None
        self.refreshed()

    def refreshed(self) -> None:
        """Certificates were re-read (a reload): close links of revoked peers."""
        if self._ca is not None:
            self.cut_revoked(self._ca)

    def cut_revoked(self, ca: Path) -> int:
        """Close the live links whose peer certificate is revoked; how many."""
        try:
            revoked = revocation.revoked_serials(ca)
        except CertError as e:
            log.error("%s: cannot check live links against the CRL: %s", self.name, e)
            return 0
        cut = 0
        for link, serial in list(self._serials.items()):
            if serial in revoked:
                log.warning(
                    "%s: closing the link of %s: its certificate (serial %x) is revoked",
                    self.name,
                    wire(link.peer_identity or "-"),
                    serial,
                )
                self.events.tls_refused("revoked")
                del self._serials[link]  # counted once
                link.close("peer certificate revoked")
                cut += 1
        return cut

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one incoming connection (for ``trio.serve_listeners``)."""
        ident = ""
        if self._ctx is not None:
            accepted = await accept_tls(
                stream,
                self._ctx,
                self.allowed_peers,
                timeout=self.handshake_timeout,
                events=self.events,
                who=self.name,
            )
            if accepted is None:
                self.refused += 1
                return
            stream, ident = accepted
        link = PeerLink(
            stream,
            client=False,
            config=self.config,
            on_open=self.table.on_open,
            name=f"{self.name}<-{ident or 'plaintext'}",
            peer_identity=ident,
            on_rtt=partial(self.events.link_rtt, self.name, outgoing=False),
        )
        self.links.add(link)
        self.events.link_up(self.name, ident)
        serial = tlsmod.peer_serial(stream) if ident else None
        if serial is not None:
            self._serials[link] = serial
        try:
            await link.run()
        finally:
            self.links.discard(link)
            self._serials.pop(link, None)
        if link.cut:
            self.events.link_cut()

    def goaway_all(self, reason: str = "shutting down") -> None:
        for link in list(self.links):
            link.goaway(reason)

    def close_all(self, reason: str = "closed") -> None:
        for link in list(self.links):
            link.close(reason)

    async def serve(
        self,
        listeners: list[trio.SocketListener] | list[Any],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await trio.serve_listeners(self.handle, listeners, task_status=task_status)


@asynccontextmanager
async def open_session_table(
    config: LinkConfig | None = None, **kw: Any
) -> AsyncIterator[SessionTable]:
    """A SessionTable whose stream engines run in a nursery bound to this block."""
    async with trio.open_nursery() as nursery:
        table = SessionTable(nursery, config, **kw)
        try:
            yield table
        finally:
            nursery.cancel_scope.cancel()
