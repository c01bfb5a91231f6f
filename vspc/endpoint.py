"""The appliance endpoint: accepts streams forwarded by relays.

Each stream starts with the relay's origin header (relay.core.header). A bad or
missing header gets one log line and a close; nothing else is affected. Telnet
streams (ingress kind ``vspc``) go to the vSPC exactly as if ESX had connected
directly; raw streams go to the console service keyed by VM and label.

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
import trio.lowlevel

from relay.core.header import HeaderDecoder, HeaderError, OriginHeader
from vic.ops.wiretext import wire
from vspc.config import EndpointConfig, VspcConfig
from vspc.console.hub import Console
from vspc.core.continuation import Continuation, StreamCursor, StreamLedger, recovered_have
from vspc.core.identity import PortKey, canonical_uuid
from vspc.link_endpoint import LinkEndpoint
from vspc.prefixed import PrefixedStream
from vspc.service import VspcService, server_ssl_context

log = logging.getLogger("vspc.endpoint")

READ_SIZE = 65536


def raw_port_key(header: OriginHeader) -> PortKey:
    """Raw streams are keyed by the VM identity the relay vouches for."""
    try:
        uuid = canonical_uuid(header.vm)
    except ValueError:
        uuid = header.vm.strip().lower()
    return PortKey(uuid, header.label or header.kind)


class Endpoint:
    def __init__(self, service: VspcService) -> None:
        self.service = service
        self.config: EndpointConfig = service.config.endpoint
        self.tcp_port: int | None = None
        self._scope: trio.CancelScope | None = None
        self._handlers: trio.Nursery | None = None
        self.links: LinkEndpoint | None = None
        self.ledger = StreamLedger(keep=self.config.resend_bytes)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as handlers:
            self._handlers = handlers
            self.links = LinkEndpoint(self, handlers)
            await self.links.apply(self.config)
            await self._start_listeners()
            task_status.started(self)

    async def _start_listeners(self) -> None:
        assert self._handlers is not None
        cfg = self.config
        listeners: list[trio.abc.Listener[Any]] = []
        if cfg.host is not None:
            tcp = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
            self.tcp_port = tcp[0].socket.getsockname()[1]
            if cfg.tls is not None:
                ctx = server_ssl_context(cfg.tls.cert, cfg.tls.key, cfg.tls.client_ca)
                listeners += [trio.SSLListener(t, ctx, https_compatible=False) for t in tcp]
            else:
                listeners += tcp
        if cfg.unix is not None:
            listeners.append(await _unix_listener(str(cfg.unix)))
        if not listeners:
            return
        self._scope = trio.CancelScope()
        self._handlers.start_soon(self._serve, listeners, self._scope)
        log.info("endpoint listening: tcp=%s unix=%s", self.tcp_port, cfg.unix)

    async def _serve(self, listeners: list[trio.abc.Listener[Any]], scope: trio.CancelScope) -> None:
        with scope:
            await trio.serve_listeners(self.handle, listeners, handler_nursery=self._handlers)

    async def reload(self, config: VspcConfig) -> None:
        if config.endpoint == self.config:
            return
        self.ledger.keep = config.endpoint.resend_bytes
        if self.links is not None:
            await self.links.apply(config.endpoint)
        plain = ("host", "port", "unix", "tls")
        if all(getattr(config.endpoint, k) == getattr(self.config, k) for k in plain):
            self.config = config.endpoint
            return
        if self._scope is not None:
            self._scope.cancel()
            await trio.lowlevel.checkpoint()
        self.config = config.endpoint
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
        except (HeaderError, trio.TooSlowError, trio.BrokenResourceError, OSError) as e:
            log.warning("relayed stream rejected: %s", e or type(e).__name__)
            self.service.metrics.relayed_streams_total.labels(kind="?", result="rejected").inc()
            await trio.aclose_forcefully(stream)
            return
        await self.serve_stream(PrefixedStream(stream, rest), header)

    async def serve_stream(self, s: trio.abc.Stream, header: OriginHeader,
                           *, log_before_ack: bool = False) -> None:
        """Serve a relayed stream whose origin header has been read and checked
        (a plain relayed connection, or a resumable stream over a peer link).

        ``log_before_ack``: ``s`` acknowledges what was read at the next read (a
        resumable stream): read on only once the console log has the bytes, so
        an appliance killed before writing them gets them again."""
        self.service.metrics.relayed_streams_total.labels(kind=header.kind, result="accepted").inc()
        log.info("relayed stream %s from %s: vm=%s kind=%s label=%s",
                 header.stream_id or "-", header.host, header.vm, header.kind, header.label)
        if header.kind == "vspc":
            if header.continues:
                log.warning("relayed Telnet stream %s from %s continues at offset %d: a new "
                            "Telnet session, not fitted on byte-exactly", wire(header.stream_id),
                            wire(header.host), header.offset)
            await self.service.handle_esx_stream(s, f"relay:{header.host}")
        else:
            await self._serve_raw(s, header, log_before_ack)

    async def _read_header(self, stream: trio.abc.Stream) -> tuple[OriginHeader, bytes]:
        dec = HeaderDecoder()
        with trio.fail_after(self.config.header_timeout):
            while True:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    raise HeaderError("stream closed before its origin header")
                header, rest = dec.feed(bytes(data))
                if header is not None:
                    return header, rest

    async def _cursor(self, header: OriginHeader, console: Console,
                      durable: bool) -> tuple[StreamCursor, bytes]:
        """Where this connection's stream stands, and what to send the VM again first;
        reports a continuation's gaps. ``durable``: the stream is acknowledged only
        once logged; its connect event (written before its first byte) lets the
        next appliance process find how much of it the log holds."""
        if not header.stream_id:
            return StreamCursor(0), b""
        key = (header.host, header.stream_id)
        have = None
        if header.continues and durable and key not in self.ledger:
            have = await self._recover(key, console)
        cursor, plan = self.ledger.begin(key, header.offset, header.received,
                                         continues=header.continues, have=have)
        if header.continues:
            self._report_continuation(header, plan)
        fields: dict[str, object] = {"host": header.host, "ingress": header.kind,
                                     "stream": header.stream_id}
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
        log.info("relayed stream %s from %s continues at offset %d (VM has %d): %s",
                 wire(header.stream_id), wire(header.host), header.offset, header.received,
                 f"skipping {plan.skip} bytes already here, sending {len(plan.resend)} again"
                 if plan.known else "not known here, taken as it comes")
        for direction, gap in (("vm_to_appliance", plan.missing_in),
                               ("appliance_to_vm", plan.missing_out)):
            if gap is not None:
                log.warning("relayed stream %s from %s: %s bytes %d..%d lost on the way (%d)",
                            wire(header.stream_id), wire(header.host), direction, gap[0],
                            gap[0] + gap[1], gap[1])
                m.relayed_gap_bytes_total.labels(direction=direction).inc(gap[1])

    async def _serve_raw(self, stream: trio.abc.Stream, header: OriginHeader,
                         log_before_ack: bool = False) -> None:
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
                    log.info("relayed stream %s: input not sent: %s", wire(header.stream_id), e)
                    return
            self.service.metrics.bytes_total.labels(direction="appliance_to_vm").inc(len(data))

        console.set_input(to_vm)
        console.set_connected(True)
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
            log.info("relayed stream %s lost: %s", header.stream_id or key, e)
        finally:
            self.service.metrics.connected_vms.dec()
            console.set_input(None)
            console.set_connected(False)
            console.event("disconnect", host=header.host)
            await trio.aclose_forcefully(stream)


async def _unix_listener(path: str) -> trio.SocketListener:
    import os

    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    os.chmod(path, 0o660)
    sock.listen(1024)
    return trio.SocketListener(sock)
