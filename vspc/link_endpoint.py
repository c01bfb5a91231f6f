"""The appliance end of the relay mesh: peer links whose resumable streams end here.

Relays open resumable streams (common.link.resumable) over peer links, each starting
with the relay's origin header. Sessions are kept in one ``SessionTable`` for
all links, so a stream resumes whichever way its relay reaches us next: after a
link cut, or through another host's relay once the appliance has moved there.

Links arrive three ways (``[[endpoint.link]]``): TLS from a relay whose
identity is in ``allowed-peers``; plaintext on a trusted transport; or
forwarded by the relay on this host (``forwarded = true``), which ended TLS and
names the identity its peer proved on the first line (common.proto.link.forwarded).
A stream whose header names anything outside the identity grammar, speaks for
another host than its link's identity, or (with ``[endpoint.vcenter]``) for a VM
vCenter places elsewhere is refused with a log line and a count; every other
stream carries on. Plaintext links only on a trusted transport (config check).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import trio
from prometheus_client import CollectorRegistry

from common.io.listen import listening
from common.link.config import bound_address, open_peer_listener
from common.link.events import NO_EVENTS, LinkEvents
from common.link.peering import LinkServer
from common.link.peerlink import LinkConfig, PeerLink
from common.link.resumable import ResumableStream
from common.link.sessions import Accepted, SessionTable
from common.link.vetting import vet_accepted
from common.ops.config import ConfigError
from common.ops.reconcile import diff, indexed, same_item, start_all
from common.ops.wiretext import wire
from common.proto.link.forwarded import PreambleDecoder, PreambleError
from common.proto.link.header import OriginHeader
from vspc.config import EndpointConfig, LinkListen
from vspc.metrics import LinkCollector, LinkMetrics
from vspc.prefixed import PrefixedStream

log = logging.getLogger("vspc.links")

PREAMBLE_TIMEOUT = 10.0


@dataclass
class _Run:
    cfg: LinkListen
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    server: LinkServer | None = None
    bound: Any = None


def _address(ln: LinkListen) -> str:
    return ln.address


class RelayedStreams(Protocol):
    """Where streams accepted over links go: vspc.endpoint.Endpoint, which also
    serves relayed connections that come without a link."""

    async def vet(self, header: OriginHeader) -> str | None:
        """Why a relay may not speak for ``header``'s VM, or None."""
        ...

    def rejected(self, kind: str, reason: str, header: OriginHeader | None = None) -> None:
        """Log and count a refused stream (the caller closes it)."""
        ...

    def count_rejected(self, kind: str) -> None:
        """Count a refused stream that is logged already."""
        ...

    async def serve_stream(
        self, s: trio.abc.Stream, header: OriginHeader, *, log_before_ack: bool = False
    ) -> None: ...


class LinkEndpoint:
    def __init__(
        self, endpoint: RelayedStreams, nursery: trio.Nursery, link_config: LinkConfig
    ) -> None:
        self.endpoint = endpoint
        self._nursery = nursery
        self.config = EndpointConfig()
        self.table = SessionTable(nursery, link_config)
        self._runs: dict[tuple[str, int], _Run] = {}
        self.forwarded_links: set[PeerLink] = set()
        self.refused = 0
        self.refusals: LinkEvents = NO_EVENTS  # export_metrics: vspc.metrics.LinkMetrics
        self._serving: set[ResumableStream] = set()
        self._closed_resumes = 0
        nursery.start_soon(self._accept_loop)

    @property
    def links_refused(self) -> int:
        """Links refused (TLS, identity, preamble) and streams refused (header)."""
        return self.refused + sum(
            r.server.refused for r in self._runs.values() if r.server is not None
        )

    def export_metrics(self, registry: CollectorRegistry) -> None:
        """Count this endpoint's link events and export its links' state on ``registry``."""
        self.refusals = LinkMetrics(registry)
        registry.register(LinkCollector(self))

    @property
    def live_links(self) -> int:
        servers = [r.server for r in self._runs.values() if r.server is not None]
        return len(self.forwarded_links) + sum(len(s.links) for s in servers)

    @property
    def resumes(self) -> int:
        """Streams served here that went on over another link (all time)."""
        return self._closed_resumes + sum(_resumes(s) for s in self._serving)

    @property
    def replay_buffered(self) -> int:
        return sum(s.replay_buffered for s in self._serving)

    @property
    def bound(self) -> list[Any]:
        return [r.bound for r in self._runs.values()]

    async def apply(self, cfg: EndpointConfig) -> None:
        """Converge the link listeners on ``cfg``; live links and sessions stay.
        The first listener that cannot start raises its ConfigError."""
        old, self.config = self.config, cfg
        tls_changed = old.link_tls != cfg.link_tls

        def same(_k: object, was: tuple[int, LinkListen], now: tuple[int, LinkListen]) -> bool:
            return same_item(_k, was, now) and not (tls_changed and was[1].tls)

        running = {k: (0, run.cfg) for k, run in self._runs.items()}
        plan = diff(running, indexed(cfg.link, _address), same=same)
        for k in plan.stop:
            self._runs.pop(k).scope.cancel()

        async def start(k: tuple[str, int], spec: tuple[int, LinkListen]) -> None:
            i, ln = spec
            try:
                with listening(f"endpoint.link[{i}].address", where=ln.address):
                    self._runs[k] = await self._nursery.start(self._listen, ln)
            except ssl.SSLError as e:
                raise ConfigError(
                    "endpoint.link-tls", f"cannot load the certificates: {e}"
                ) from None

        await start_all(plan.start, start, keep_going=False)

    def goaway(self) -> None:
        for run in self._runs.values():
            run.scope.cancel()
            if run.server is not None:
                run.server.goaway_all("appliance draining")
        for link in list(self.forwarded_links):
            link.goaway("appliance draining")

    async def _listen(self, ln: LinkListen, *, task_status: Any) -> None:
        run = _Run(ln)
        with run.scope:
            listener = await open_peer_listener(ln.address)
            run.bound = bound_address(listener)
            if ln.forwarded:
                handler = self._forwarded
            else:
                files = self.config.link_tls.files() if (ln.tls and self.config.link_tls) else None
                run.server = LinkServer(
                    self.table,
                    tls_files=files,
                    allowed_peers=ln.allowed_peers,
                    name=f"link {ln.address}",
                    events=self.refusals,
                )
                handler = run.server.handle
            log.info(
                "link listener %s (%s)",
                ln.address,
                "forwarded by a relay" if ln.forwarded else "TLS" if ln.tls else "plaintext",
            )
            task_status.started(run)
            await trio.serve_listeners(handler, [listener], handler_nursery=self._nursery)

    async def _forwarded(self, stream: trio.abc.Stream) -> None:
        dec = PreambleDecoder()
        try:
            with trio.fail_after(PREAMBLE_TIMEOUT):
                while True:
                    data = await stream.receive_some(4096)
                    if not data:
                        raise PreambleError("closed before the VICLINK preamble")
                    ident, rest = dec.feed(bytes(data))
                    if ident is not None:
                        break
        except (PreambleError, trio.TooSlowError, trio.BrokenResourceError, OSError) as e:
            self.refused += 1
            log.warning("forwarded link refused: %s", wire(str(e) or type(e).__name__))
            await trio.aclose_forcefully(stream)
            return
        link = PeerLink(
            PrefixedStream(stream, rest),
            client=False,
            config=self.table.config,
            on_open=self.table.on_open,
            name=f"link<-{ident} (forwarded)",
            peer_identity=ident,
            on_rtt=partial(self.refusals.link_rtt, "forwarded", outgoing=False),
        )
        self.forwarded_links.add(link)
        self.refusals.link_up("forwarded", ident)
        log.info("forwarded link from %s", wire(ident))
        try:
            await link.run()
        finally:
            self.forwarded_links.discard(link)
        if link.cut:
            self.refusals.link_cut()

    async def _accept_loop(self) -> None:
        async for acc in self.table:
            self._accepted(acc)

    def _accepted(self, acc: Accepted) -> None:
        header = vet_accepted(acc, _HeaderRefusals(self))
        if header is None:
            self.refused += 1
            return
        self._nursery.start_soon(self._serve, acc, header)

    async def _serve(self, acc: Accepted, header: OriginHeader) -> None:
        self._serving.add(acc.stream)
        try:
            reason = await self.endpoint.vet(header)
            if reason is not None:
                self.refused += 1
                self.endpoint.rejected(header.kind, reason, header)
                acc.stream.abort(reason)
                return
            await self.endpoint.serve_stream(acc.stream, header, log_before_ack=True)
        finally:
            self._serving.discard(acc.stream)
            self._closed_resumes += _resumes(acc.stream)
            await trio.aclose_forcefully(acc.stream)


def _resumes(s: ResumableStream) -> int:
    return max(0, s.attachments - 1)  # the first attachment is the open


class _HeaderRefusals(LinkEvents):
    """vet_accepted logged a refused header; count it with the endpoint's refusals."""

    def __init__(self, links: LinkEndpoint) -> None:
        self.links = links

    def header_refused(self, reason: str) -> None:
        self.links.endpoint.count_rejected("?")
