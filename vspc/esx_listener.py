"""The vSPC service's listeners: the ESX Telnet listener (TCP, or TLS) and the
metrics endpoint; opening, serving, stopping and rebinding them, and who may
connect (``listen.allowed-sources``)."""

from __future__ import annotations

import errno
import logging
import os
import select
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import trio

from common.io.listen import listening
from common.io.streamlayers import find_layer
from common.ops.config import ConfigError
from common.ops.metrics_http import serve_metrics
from common.ops.wiretext import wire
from vspc.config import ListenConfig, MetricsConfig, address_allowed
from vspc.service_shape import Server, ServiceShape

log = logging.getLogger("vspc")

#: accept() errors that mean "out of file descriptors or memory": wait, then go on.
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY = 0.1


class EsxListeners(ServiceShape):
    def _log_listening(self, lc: ListenConfig) -> None:
        log.info(
            "vSPC listening on %s:%s%s",
            lc.host,
            self.esx_port,
            " (TLS)" if lc.tls is not None else "",
        )

    def _log_metrics(self, mc: MetricsConfig) -> None:
        log.info("metrics on http://%s:%s/metrics", mc.host, self.metrics_port)

    def readiness(self) -> str | None:
        """For ``/readyz``: None while the ESX listener is bound and the vSPC not draining."""
        if self._draining:
            return "draining"
        if self._listener is None or self._listener.done.is_set():
            return "ESX listener not bound"
        return None

    async def _start_listening(self, lc: ListenConfig, *, quiet: bool = False) -> Server:
        """Open the ESX listeners (raises ConfigError naming the key if impossible)."""
        assert self._handlers is not None
        with listening("listen.port", host_key="listen.host", where=f"{lc.host}:{lc.port}"):
            tcp = await trio.open_tcp_listeners(lc.port, host=lc.host)
        listeners: list[trio.abc.Listener[Any]] = list(tcp)
        if lc.tls is not None:
            try:
                ctx = lc.tls.context()
            except (OSError, ssl.SSLError) as e:
                for t in tcp:
                    await t.aclose()
                raise ConfigError("listen.tls", f"cannot load the certificate: {e}") from None
            listeners = [trio.SSLListener(t, ctx, https_compatible=False) for t in tcp]
        self.esx_port = tcp[0].socket.getsockname()[1]
        server = Server(trio.CancelScope(), trio.Event())
        self._handlers.start_soon(self._serve, listeners, server)
        if not quiet:
            self._log_listening(lc)
        return server

    async def _serve(self, listeners: list[trio.abc.Listener[Any]], server: Server) -> None:
        try:
            with server.scope:
                async with trio.open_nursery() as accepting:
                    for lst in listeners:
                        accepting.start_soon(self._accept_loop, lst)
        finally:
            with trio.CancelScope(shield=True):
                for lst in listeners:
                    await trio.aclose_forcefully(lst)
            server.done.set()

    async def _accept_loop(self, listener: trio.abc.Listener[Any]) -> None:
        """trio.serve_listeners without its wrapper task: the stream is the handler's to
        close (an ESX connection's task may end while it stays open: esx_parking)."""
        assert self._handlers is not None
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:
                if e.errno not in _CAPACITY_ERRNOS:
                    raise
                log.error("accept: %s; retrying in %.1f s", os.strerror(e.errno), ACCEPT_RETRY)
                await trio.sleep(ACCEPT_RETRY)
                continue
            try:
                handler = self._accepted(stream)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            self._handlers.start_soon(_given(handler), name="esx")  # (no wrapper frame)

    @staticmethod
    async def _stop(server: Server | None) -> None:
        if server is not None:
            server.scope.cancel()
            await server.done.wait()

    async def _start_metrics(self, mc: MetricsConfig, *, quiet: bool = False) -> Server:
        assert self._tasks is not None
        server = Server(trio.CancelScope(), trio.Event())

        async def serve(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with server.scope:
                    await serve_metrics(
                        self.metrics.registry,
                        mc.host,
                        mc.port,
                        ready=self.readiness,
                        task_status=task_status,
                    )
            finally:
                server.done.set()

        with listening("metrics.port", host_key="metrics.host", where=f"{mc.host}:{mc.port}"):
            self.metrics_port = await self._tasks.start(serve)
        if not quiet:
            self._log_metrics(mc)
        return server

    def _accepted(self, stream: trio.abc.Stream) -> Coroutine[Any, Any, None]:
        # Not a coroutine function itself (nor is handle_esx_stream): a connection's
        # task holds one coroutine frame less each (16k connections: ~0.5 KiB each).
        peer = peer_name(stream)
        if not address_allowed(source_of(peer), self._allowed):
            log.warning(
                "Telnet connection from %s refused: not in listen.allowed-sources", wire(peer)
            )
            self.metrics.telnet_refused_total.labels(reason="source").inc()
            return close_refused(stream)
        return self.handle_esx_stream(stream, peer, park=True)

    async def stop_listening(self) -> None:
        await self._stop(self._listener)
        self._listener = None

    async def _relisten(self, old: ListenConfig, new: ListenConfig) -> None:
        same_addr = old.host == new.host and new.port != 0 and new.port in (old.port, self.esx_port)
        if same_addr:  # the port is ours: free it, then bind again (or go back)
            bound = replace(old, port=self.esx_port or old.port)
            await self.stop_listening()
            try:
                self._listener = await self._start_listening(new)
            except ConfigError:
                self._listener = await self._start_listening(bound)
                raise
        else:  # bind the new address first, so a failure leaves the old one
            server = await self._start_listening(new)
            await self.stop_listening()
            self._listener = server


def _given(coro: Coroutine[Any, Any, None]) -> Callable[[], Coroutine[Any, Any, None]]:
    return lambda: coro


async def close_refused(stream: trio.abc.Stream) -> None:
    await trio.aclose_forcefully(stream)


def source_of(peer: str) -> str:
    """The source address of a peer name: the IP of ``ip:port``; a relayed stream's
    ``relay:<host>`` as it is (the relay's host speaks for its streams)."""
    if peer.startswith("relay:"):
        return peer
    return peer.rpartition(":")[0] or peer


def is_tls(stream: trio.abc.Stream) -> bool:
    return find_layer(stream, trio.SSLStream) is not None


def peer_name(stream: trio.abc.Stream) -> str:
    s = find_layer(stream, trio.SocketStream)
    if s is None:
        return "?"
    try:
        name = s.socket.getpeername()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name) or "unix"


def peer_gone(stream: trio.abc.Stream) -> bool:
    """Whether the peer of a TCP stream (TLS or not) has closed or reset it, seen
    without reading (a paused reader's data may still be queued before the FIN)."""
    s = find_layer(stream, trio.SocketStream)
    if s is None:
        return False  # not a socket: the stream's own timeouts must do
    fd = s.socket.fileno()
    if fd < 0:
        return True  # closed here
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))
