"""The console service: registry of consoles, log writer, attach endpoints."""

from __future__ import annotations

import builtins
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

import trio

from common.io import fastsock
from common.io.unixlisten import UnixListener
from common.ops.excgroups import first_leaf
from common.ops.reconcile import diff
from common.ops.wiretext import wire
from common.proto.console import protocol as proto
from vspc.console.clientqueue import Client
from vspc.console.config import ConsoleConfig
from vspc.console.connection import (
    RECV_SIZE,
    grow_sndbuf,
    peer_name,
    read_request_line,
    send_error,
    tls_peer,
)
from vspc.console.endpoint import EndpointError, open_tcp, open_unix, server_ssl_context
from vspc.console.history import DiskConsole, scan
from vspc.console.hub import Console, ConsoleBusy, Hub
from vspc.console.info import ConsoleInfo
from vspc.console.logbatch import LogSettings
from vspc.console.logwriter import LogWriter
from vspc.console.lookup import LookupFailed as LookupFailed
from vspc.console.lookup import pick
from vspc.console.tlsgate import accept_operator, tls_refused
from vspc.core.identity import PortKey
from vspc.metrics import VspcMetrics
from vspc.revokedcut import RevokedCut

log = logging.getLogger("vspc.console")

#: Departed consoles whose log bytes are still being written are tried again after this.
RETENTION_RETRY = 1.0


def log_settings(config: ConsoleConfig) -> LogSettings:
    return LogSettings(
        dir=config.log_dir,
        max_bytes=config.log_max_bytes,
        keep=config.log_keep,
        queue_bytes=config.log_queue_bytes,
        queue_total_bytes=config.log_queue_total_bytes,
        hold_bytes=config.log_hold_bytes,
    )


def _endpoint_config(c: ConsoleConfig) -> dict[str, tuple[object, ...]]:  # one keyed spec
    return {"console": (c.socket, c.socket_mode, c.tcp)}


SessionRequests = Callable[[trio.abc.Stream, proto.SessionRequest, bytes], Awaitable[None]]


class ConsoleService:
    """All consoles of the appliance, their logs, and the attach endpoint(s)."""

    def __init__(self, config: ConsoleConfig, metrics: VspcMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.writer = LogWriter(log_settings(config), metrics)
        self._hub = Hub(config, self.writer, metrics)
        self._consoles: dict[PortKey, Console] = {}
        self._nursery: trio.Nursery | None = None
        self._listen_scope: trio.CancelScope | None = None
        self._listen_done: trio.Event | None = None
        self.tcp_addresses: list[tuple[str, int]] = []
        # EXEC, LOGS, SESSION-ATTACH, ROTATE (vspc.sessions.requests), set when sessions are served
        self.session_requests: SessionRequests | None = None
        self._tls_refused = tls_refused(metrics.registry)
        self.revoked_cut = RevokedCut(metrics.registry, "console", None)  # live TLS attaches

    # --- the API for the vSPC and the endpoint ----------------------------------

    def open(self, key: PortKey, display: str) -> Console:
        """The console of ``key`` (created on first use). A non-empty ``display`` updates it."""
        c = self._consoles.get(key)
        if c is None:
            c = Console(self._hub, key, display or key.uuid)
            self._consoles[key] = c
        elif display:
            c.display = display
        return c

    def get(self, key: PortKey) -> Console | None:
        return self._consoles.get(key)

    def list(self) -> list[ConsoleInfo]:
        """The consoles in memory."""
        return [c.info() for c in sorted(self._consoles.values(), key=lambda c: c.key)]

    async def list_all(self) -> builtins.list[ConsoleInfo]:
        """The consoles in memory, and those only the log directory still knows."""
        infos = self.list()
        known = {i.key for i in infos}
        for d in await self._on_disk():
            if d.key not in known:
                known.add(d.key)
                infos.append(ConsoleInfo(d.key, d.display, False, 0, 0, logged=d.logged))
        return sorted(infos, key=lambda i: i.key)

    async def _on_disk(self) -> builtins.list[DiskConsole]:
        if self.config.log_dir is None:
            return []
        return await trio.to_thread.run_sync(scan, self.config.log_dir)

    async def find_or_load(self, target: str, label: str | None = None) -> Console:
        """``find``, falling back to the consoles the log directory knows (loaded;
        their replay comes from the files, see ``Console.read_history``)."""
        try:
            return self.find(target, label)
        except LookupFailed:
            disk = await self._on_disk()
            if not disk:
                raise
        d = pick(disk, target, label)
        return self.open(d.key, d.display)

    def forget_departed(self) -> int:
        """Forget the departed consoles retention says are due; how many went."""
        ret = self._hub.retention
        gone = 0
        for key in ret.due(trio.current_time()):
            c = self._consoles.get(key)
            if c is not None and not c.idle:
                if c.connected or c.clients:
                    ret.returned(key)  # (not departed after all)
                continue  # log bytes still on their way: next time
            ret.returned(key)
            self._consoles.pop(key, None)
            gone += 1
        return gone

    async def _retention_loop(self) -> None:
        hub = self._hub
        while True:
            hub.sweep = trio.Event()
            self.forget_departed()
            wake = hub.retention.next_due()
            if hub.retention.due(trio.current_time()):  # only log bytes in the way: soon again
                wake = trio.current_time() + RETENTION_RETRY
            with trio.move_on_at(wake if wake is not None else math.inf):
                await hub.sweep.wait()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the endpoint(s) and the log writer until cancelled.

        Raises EndpointError (a ConfigError) when a listener cannot be opened.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.writer.run)
                nursery.start_soon(self._retention_loop)
                await nursery.start(self._listen, self.config)
                task_status.started()
        except BaseExceptionGroup as eg:
            match, rest = eg.split(EndpointError)
            if match is not None and rest is None:
                raise first_leaf(match) from None
            raise
        finally:
            self._nursery = None

    async def reconfigure(self, config: ConsoleConfig) -> None:
        """Apply a new config live: limits, ring size, retention, log dir, endpoints
        (attached clients and queued log data are kept)."""
        old = self.config
        self.config = config
        self._hub.config = config
        self._hub.retention.reconfigure(config.retention, config.max_departed)
        self._hub.sweep.set()
        await self.writer.reconfigure(log_settings(config))
        if old.ring_bytes != config.ring_bytes:
            for c in self._consoles.values():
                c.apply_config(config)
        if diff(_endpoint_config(old), _endpoint_config(config)).stop and self._nursery:
            await self._stop_listening()
            try:
                await self._nursery.start(self._listen, config)
            except (EndpointError, OSError, ssl.SSLError, BaseExceptionGroup) as e:
                log.error("console endpoint: new settings failed (%s); keeping the old ones", e)
                self.config = old
                self._hub.config = config  # limits still apply
                await self._nursery.start(self._listen, old)

    # --- matching ------------------------------------------------------------------

    def find(self, target: str, label: str | None = None) -> Console:
        """The console matching ``target`` (uuid, display, or unique prefix) and label.

        Without a label, ``vm:label`` is understood when ``target`` alone matches nothing.
        """
        return pick(builtins.list(self._consoles.values()), target, label)

    # --- endpoints -----------------------------------------------------------------

    async def stop_listening(self) -> None:
        """Close the attach endpoint(s) (SIGTERM drain); attached clients carry on."""
        await self._stop_listening()

    async def _stop_listening(self) -> None:
        if self._listen_scope is not None:
            self._listen_scope.cancel()
        if self._listen_done is not None:
            await self._listen_done.wait()

    async def _listen(
        self, config: ConsoleConfig, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        done = trio.Event()
        self._listen_done = done
        unix: UnixListener | None = None
        tcp_listeners: list[trio.SocketListener] = []
        try:
            with trio.CancelScope() as scope:
                self._listen_scope = scope
                ctx: ssl.SSLContext | None = None
                if config.tcp is not None:
                    ctx = server_ssl_context(config.tcp)
                    self.revoked_cut.ca = config.tcp.client_ca
                    tcp_listeners = await open_tcp(config.tcp)
                if config.socket is not None:
                    unix = await open_unix(config.socket, config.socket_mode)
                self.tcp_addresses = [lst.socket.getsockname()[:2] for lst in tcp_listeners]
                async with trio.open_nursery() as n:
                    if unix is not None:
                        n.start_soon(self._accept_loop, unix, None)
                        log.info(
                            "console endpoint: unix %s (mode %o)", config.socket, config.socket_mode
                        )
                    for lst in tcp_listeners:
                        n.start_soon(self._accept_loop, lst, ctx)
                        log.info("console endpoint: tcp+mTLS %s", lst.socket.getsockname()[:2])
                    task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                if unix is not None:
                    await unix.aclose()
                for lst in tcp_listeners:
                    await lst.aclose()
            self.tcp_addresses = []
            done.set()

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.SocketStream], ctx: ssl.SSLContext | None
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:  # EMFILE and friends: wait a little, do not spin
                log.error("console endpoint: accept failed: %s", e)
                await trio.sleep(0.1)
                continue
            assert self._nursery is not None
            self._nursery.start_soon(self._handle, stream, ctx)

    async def _handle(self, raw: trio.SocketStream, ctx: ssl.SSLContext | None) -> None:
        with trio.CancelScope() as live, ExitStack() as tracked:  # cut if revoked
            await self._handle_in(raw, ctx, live, tracked)

    async def _handle_in(
        self,
        raw: trio.SocketStream,
        ctx: ssl.SSLContext | None,
        live: trio.CancelScope,
        tracked: ExitStack,
    ) -> None:
        stream: trio.abc.Stream = raw
        peer = peer_name(raw)
        try:
            with trio.move_on_after(self.config.request_timeout) as cs:
                if ctx is not None:
                    tls = await accept_operator(raw, ctx, peer, self._tls_refused)
                    if tls is None:
                        return
                    stream = tls
                    peer = tls_peer(tls, peer)
                    tracked.enter_context(self.revoked_cut.track(tls, peer, live))
                line, rest = await read_request_line(stream)
            if cs.cancelled_caught:
                log.info(
                    "console client %s: no request within %ss", peer, self.config.request_timeout
                )
                return
            try:
                req = proto.decode_request(line)
            except proto.ProtocolError as e:
                await send_error(stream, f"bad request: {e}")
                return
            if isinstance(req, proto.SessionRequest):
                if self.session_requests is None:
                    await send_error(stream, "this appliance serves no sessions")
                    return
                await self.session_requests(stream, req, rest)
                return
            if isinstance(req, proto.ListRequest):
                infos = await self.list_all()
                body = proto.encode_line({"ok": True, "consoles": [i.to_json() for i in infos]})
                await stream.send_all(body)
                return
            await self._attach(stream, req, rest, peer)
        except proto.ProtocolError as e:
            log.info("console client %s: %s", peer, wire(str(e)))
            await send_error(stream, str(e))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as e:
            log.info("console client %s: connection lost: %s", peer, e)
        except Exception:
            log.exception("console client %s: unexpected error", peer)
        finally:
            await trio.aclose_forcefully(stream)

    async def _attach(
        self, stream: trio.abc.Stream, req: proto.AttachRequest, rest: bytes, peer: str
    ) -> None:
        try:
            console = await self.find_or_load(req.vm, req.label)
        except LookupFailed as e:
            await send_error(stream, str(e))
            return
        await console.read_history()
        n = console.replay_size(req.replay)
        status = proto.encode_line(
            {
                "ok": True,
                "uuid": console.key.uuid,
                "label": console.key.label,
                "display": console.display,
                "mode": req.mode,
                "replay": n,
                "connected": console.connected,
            }
        )
        try:
            client = console.attach(
                req.mode, req.replay, peer, preamble=status, notices=req.notices
            )
        except ConsoleBusy as e:
            await send_error(stream, str(e))
            return
        reason = "closed"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    self._client_input, stream, console, client, rest, nursery.cancel_scope
                )
                with trio.CancelScope() as scope:
                    client.scope = scope
                    if client.closed:  # dropped before we got here
                        scope.deadline = trio.current_time() + self.config.drop_notice_timeout
                    if isinstance(stream, trio.SocketStream):
                        grow_sndbuf(stream, self.config.client_queue_bytes)
                    send_parts = fastsock.parts_sender(stream)
                    if type(stream) is trio.SocketStream:  # (TLS: through the sender)
                        client.direct = fastsock.fast_socket(stream.socket)
                    while parts := await client.next_parts():
                        await send_parts(parts)
                if client.dropped:
                    reason = "slow"
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            reason = f"connection lost: {e}"
        finally:
            console.detach(client, reason=reason)

    async def _client_input(
        self,
        stream: trio.abc.Stream,
        console: Console,
        client: Client,
        first: bytes,
        done: trio.CancelScope,
    ) -> None:
        try:
            if first:
                await console.from_client(client, first)
            while True:
                data = await stream.receive_some(RECV_SIZE)
                if not data:
                    break
                await console.from_client(client, bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass
        done.cancel()
