"""The appliance endpoint: accepts streams forwarded by relays.

Each stream starts with the relay's origin header (common.proto.link.header). Before a
header names anything it must pass the identity grammar (common.proto.identity);
from a relay that proved who it is (a client certificate here, or the identity
of its peer link) it may speak only for that relay's host (``vic://host/<host>``);
and with ``[endpoint.vcenter]`` only for VMs vCenter places on that host. A
refused header costs its own stream: one log line, a count in
``vspc_relayed_streams_total{result="rejected"}``, a close. Telnet streams
(ingress kind ``vspc``) go to the vSPC exactly as if ESX had connected directly;
raw streams go to the console service keyed by VM and label.

A raw stream whose header (version 2) says it continues an earlier connection
of the same stream (a relay on its path restarted) is fitted on exactly
(vspc.core.continuation): bytes the console already has are skipped, bytes the
VM never received are sent again, and anything neither side still has is a
logged, counted gap.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from common.io.listen import listening
from common.io.unixlisten import open_unix_listener
from common.link.tls import PeerIdentityError, peer_identity
from common.link.vetting import HOST_PREFIX
from common.ops.reconcile import diff
from common.ops.wiretext import wire
from common.proto.address import is_loopback_host
from common.proto.link.header import HeaderDecoder, HeaderError, OriginHeader, check_identity
from vspc.config import EndpointConfig, VspcConfig
from vspc.console.hub import Console
from vspc.core.continuation import Continuation, StreamCursor, StreamLedger, recovered_have
from vspc.core.identity import PortKey
from vspc.link_endpoint import LinkEndpoint
from vspc.placement import Placement
from vspc.prefixed import PrefixedStream
from vspc.service import VspcService
from vspc.sessions.service import LABEL as SESSION_LABEL
from vspc.tlsrefusals import count_handshake_refusal

log = logging.getLogger("vspc.endpoint")

READ_SIZE = 65536
_READ_ERRORS = (
    HeaderError,
    PeerIdentityError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    OSError,
)


def raw_port_key(header: OriginHeader) -> PortKey:
    """Raw streams are keyed by the VM identity the relay vouches for: a VC UUID
    canonicalised, any other name kept exactly (IdentityError outside the grammar)."""
    return PortKey.from_raw(header.vm, header.label or header.kind)


def certificate_identity(stream: trio.abc.Stream) -> str:
    """The ``vic://`` identity of a TLS client's certificate; "" when the stream
    is not TLS or the client sent no certificate (only allowed where the endpoint
    asks for none: loopback, or ``insecure = true``)."""
    if not isinstance(stream, trio.SSLStream) or not stream.getpeercert(binary_form=True):
        return ""
    return peer_identity(stream)


def speaks_for_own_host(header: OriginHeader, identity: str) -> str | None:
    """None if a relay that proved ``identity`` may send ``header``; else why not.
    A relay speaks only for its own host; no identity (trusted transport) is not
    restricted here."""
    if not identity or identity == HOST_PREFIX + header.host:
        return None
    return f"certificate {identity} may not speak for host {header.host!r}"


class Endpoint:
    def __init__(self, service: VspcService) -> None:
        self.service = service
        self.config: EndpointConfig = service.config.endpoint
        self.tcp_port: int | None = None
        self._scope: trio.CancelScope | None = None
        self._served = trio.Event()
        self._handlers: trio.Nursery | None = None
        self.links: LinkEndpoint | None = None
        self.placement = _placement(self.config)
        service.relayed_vm_check = self._telnet_placement
        self.ledger = StreamLedger(keep=self.config.resend_bytes)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as handlers:
            self._handlers = handlers
            self.links = LinkEndpoint(self, handlers, self.config.link_tuning.link_config())
            self.links.export_metrics(self.service.metrics.registry)
            await self.links.apply(self.config)
            await self._start_listeners()
            task_status.started(self)

    async def _start_listeners(self) -> None:
        assert self._handlers is not None
        cfg = self.config
        listeners: list[trio.abc.Listener[Any]] = []
        if cfg.host is not None:
            with listening(
                "endpoint.port", host_key="endpoint.host", where=f"{cfg.host}:{cfg.port}"
            ):
                tcp = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
            self.tcp_port = tcp[0].socket.getsockname()[1]
            if cfg.tls is not None:
                ctx = cfg.tls.context()
                listeners += [trio.SSLListener(t, ctx, https_compatible=False) for t in tcp]
            else:
                listeners += tcp
        if cfg.unix is not None:
            with listening("endpoint.unix", where=str(cfg.unix)):
                listeners.append(await open_unix_listener(cfg.unix, mode=0o660, backlog=1024))
        if not listeners:
            return
        self._scope = trio.CancelScope()
        self._served = trio.Event()
        self._handlers.start_soon(self._serve, listeners, self._scope, self._served)
        log.info("endpoint listening: tcp=%s unix=%s", self.tcp_port, cfg.unix)
        if cfg.host is not None and not cfg.relay_certificates() and not is_loopback_host(cfg.host):
            log.warning(
                "endpoint on %s:%s takes unauthenticated relays (insecure = true): anyone "
                "who reaches it speaks for any VM",
                cfg.host,
                self.tcp_port,
            )

    async def _serve(
        self, listeners: list[trio.abc.Listener[Any]], scope: trio.CancelScope, served: trio.Event
    ) -> None:
        try:
            with scope:
                await trio.serve_listeners(self.handle, listeners, handler_nursery=self._handlers)
        finally:
            served.set()  # listeners closed: the Unix path is free for the next ones

    async def reload(self, config: VspcConfig) -> None:
        if config.endpoint == self.config:
            return
        if config.endpoint.vcenter != self.config.vcenter:
            if self.placement is not None:
                await self.placement.aclose()
            self.placement = _placement(config.endpoint)
        self.ledger.keep = config.endpoint.resend_bytes
        if self.links is not None:
            await self.links.apply(config.endpoint)
        plan = diff(_plain(self.config), _plain(config.endpoint))
        if plan.stop and self._scope is not None:
            self._scope.cancel()
            await self._served.wait()
        self.config = config.endpoint
        if plan.start:
            await self._start_listeners()

    async def drain(self, deadline: float) -> None:
        if self._scope is not None:
            self._scope.cancel()
        if self.links is not None:
            self.links.goaway()
            # streams that end here never end by themselves: leave them to their
            # relays, which carry them on (what is logged is skipped, see _recover)
            self.links.table.leave_all("appliance stopping: carry the stream on")
        if self._handlers is not None:
            self._handlers.cancel_scope.deadline = deadline

    async def handle(self, stream: trio.abc.Stream) -> None:
        try:
            header, rest = await self._read_header(stream)
            identity = certificate_identity(stream)
        except _READ_ERRORS as e:
            self.rejected("?", str(e) or type(e).__name__)
            count_handshake_refusal(self.service.metrics.registry, "endpoint", stream, e)
            await trio.aclose_forcefully(stream)
            return
        reason = speaks_for_own_host(header, identity) or await self.vet(header)
        if reason is not None:
            self.rejected(header.kind, reason, header)
            await trio.aclose_forcefully(stream)
            return
        await self.serve_stream(PrefixedStream(stream, rest), header)

    async def vet(self, header: OriginHeader) -> str | None:
        """Why a relay may not speak for ``header``'s VM (vCenter places it on another
        host, or knows no such VM), or None. Telnet streams name no VM yet."""
        if self.placement is None or header.kind == "vspc":
            return None
        return await self.placement.check(header.vm, header.host)

    async def _telnet_placement(self, vm: str, host: str) -> str | None:
        """The vSPC's question for a relayed Telnet stream once ESX named its VM."""
        if self.placement is None:
            return None
        return await self.placement.check(vm, host)

    def rejected(self, kind: str, reason: str, header: OriginHeader | None = None) -> None:
        """One log line and a count for a refused stream (the caller closes it)."""
        who = (
            ""
            if header is None
            else f"={wire(header.stream_id or '-')} host={wire(header.host)} vm={wire(header.vm)}"
        )
        log.warning("relayed stream%s rejected: %s", who, wire(reason))
        self.count_rejected(kind)

    def count_rejected(self, kind: str) -> None:
        self.service.metrics.relayed_streams_total.labels(kind=kind, result="rejected").inc()

    async def serve_stream(
        self, s: trio.abc.Stream, header: OriginHeader, *, log_before_ack: bool = False
    ) -> None:
        """Serve a relayed stream whose origin header has been read and checked
        (a plain relayed connection, or a resumable stream over a peer link).

        ``log_before_ack``: ``s`` acknowledges what was read at the next read (a
        resumable stream): read on only once the console log has the bytes, so
        an appliance killed before writing them gets them again."""
        self.service.metrics.relayed_streams_total.labels(kind=header.kind, result="accepted").inc()
        log.info(
            "relayed stream=%s host=%s vm=%s kind=%s label=%s",
            wire(header.stream_id or "-"),
            wire(header.host),
            wire(header.vm),
            header.kind,
            wire(header.label),
            extra={"stream": header.stream_id, "host": header.host, "vm": header.vm},
        )
        if header.kind == "vspc":
            if header.continues:
                log.warning(
                    "relayed stream=%s host=%s (Telnet) continues at offset %d: a new "
                    "Telnet session, not fitted on byte-exactly",
                    wire(header.stream_id),
                    wire(header.host),
                    header.offset,
                )
            await self.service.handle_esx_stream(s, f"relay:{header.host}")
        elif header.label == SESSION_LABEL:
            await self._serve_session(s, header)
        else:
            await self._serve_raw(s, header, log_before_ack)

    async def _serve_session(self, s: trio.abc.Stream, header: OriginHeader) -> None:
        """A tether's sealed session (vspc.sessions), not a console's bytes."""
        if self.service.sessions is None:
            log.warning("session stream from %s refused: sessions disabled", wire(header.host))
            self.count_rejected(header.kind)
            return
        await self.service.sessions.serve_stream(s, header)

    async def _read_header(self, stream: trio.abc.Stream) -> tuple[OriginHeader, bytes]:
        dec = HeaderDecoder()
        with trio.fail_after(self.config.header_timeout):
            while True:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    raise HeaderError("stream closed before its origin header")
                header, rest = dec.feed(bytes(data))
                if header is not None:
                    return check_identity(header), rest

    async def _cursor(
        self, header: OriginHeader, console: Console, durable: bool
    ) -> tuple[StreamCursor, bytes]:
        """Where this connection's stream stands, and what to send the VM again first;
        reports a continuation's gaps. ``durable``: the stream is acknowledged only
        once logged; its connect event (written before its first byte) lets the
        next appliance process find how much of it the log holds."""
        if not header.stream_id:
            console.event("connect", host=header.host, ingress=header.kind, stream="")
            return StreamCursor(0), b""
        key = (header.host, header.stream_id)
        have = None
        if header.continues and durable and key not in self.ledger:
            have = await self._recover(key, console)
        cursor, plan = self.ledger.begin(
            key, header.offset, header.received, continues=header.continues, have=have
        )
        if header.continues:
            self._report_continuation(header, plan)
        fields: dict[str, object] = {
            "host": header.host,
            "ingress": header.kind,
            "stream": header.stream_id,
        }
        if durable:
            size = await console.log_size()
            if size is not None:
                fields.update(offset=cursor.received, log_size=size)
        console.event("connect", **fields)
        if durable:
            await console.flush_events()
        return cursor, plan.resend

    async def _recover(self, key: tuple[str, str], console: Console) -> int | None:
        """After a restart: how much of stream ``key`` the console log holds."""
        path = console.events_path()
        size = await console.log_size()
        if path is None or size is None:
            return None
        try:
            async with await trio.open_file(path, "rb") as f:
                await f.seek(0, 2)
                end = await f.tell()
                await f.seek(max(0, end - 65536))
                lines = (await f.read()).splitlines()
        except OSError:
            return None
        return recovered_have(lines, key, size)

    def _report_continuation(self, header: OriginHeader, plan: Continuation) -> None:
        m = self.service.metrics
        m.relayed_continued_total.labels(known="yes" if plan.known else "no").inc()
        log.info(
            "relayed stream=%s host=%s continues at offset %d (VM has %d): %s",
            wire(header.stream_id),
            wire(header.host),
            header.offset,
            header.received,
            f"skipping {plan.skip} bytes already here, sending {len(plan.resend)} again"
            if plan.known
            else "not known here, taken as it comes",
        )
        for direction, gap in (
            ("vm_to_appliance", plan.missing_in),
            ("appliance_to_vm", plan.missing_out),
        ):
            if gap is not None:
                log.warning(
                    "relayed stream=%s host=%s: %s bytes %d..%d lost on the way (%d)",
                    wire(header.stream_id),
                    wire(header.host),
                    direction,
                    gap[0],
                    gap[0] + gap[1],
                    gap[1],
                )
                m.relayed_gap_bytes_total.labels(direction=direction).inc(gap[1])

    async def _serve_raw(
        self, stream: trio.abc.Stream, header: OriginHeader, log_before_ack: bool = False
    ) -> None:
        key = raw_port_key(header)
        console = self.service.consoles.open(key, header.vm)
        cursor, again = await self._cursor(header, console, log_before_ack)
        send_lock = trio.Lock()

        async def to_vm(data: bytes) -> None:
            async with send_lock:
                # counted (and kept) first: if the stream breaks now, a continuation
                # learns from the VM's end what arrived and gets the rest again
                cursor.sent_out(data)
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                    log.info("relayed stream=%s: input not sent: %s", wire(header.stream_id), e)
                    return
            self.service.metrics.bytes_total.labels(direction="appliance_to_vm").inc(len(data))

        was_connected = console.connected
        link = console.connect(to_vm, header.host)  # gets the input while it is the newest
        if not was_connected:
            self.service.metrics.connected_vms.inc()
        try:
            if again:
                await to_vm(again)
            while True:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    break
                data = cursor.take(bytes(data))
                self.service.metrics.bytes_total.labels(direction="vm_to_appliance").inc(len(data))
                await console.from_vm(data)
                if log_before_ack:
                    await console.wait_logged()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.info("relayed stream=%s lost: %s", wire(header.stream_id or str(key)), e)
        finally:
            console.disconnect(link)  # an older live stream of this port gets the input back
            if not console.connected:
                self.service.metrics.connected_vms.dec()
            console.event("disconnect", host=header.host)
            await trio.aclose_forcefully(stream)


def _plain(cfg: EndpointConfig) -> dict[str, tuple[Any, ...]]:
    """The relayed-connection listeners (TCP and Unix, started and stopped together)
    as one keyed spec for ``common.ops.reconcile``."""
    return {"endpoint": (cfg.host, cfg.port, cfg.unix, cfg.tls)}


def _placement(cfg: EndpointConfig) -> Placement | None:
    return Placement(cfg.vcenter) if cfg.vcenter is not None else None
