"""The Docker endpoint's listeners: a Unix socket and optional TCP with mutual TLS.

``DockerServer(config, sessions, metrics).run`` (a trio task, ``nursery.start``)
opens the listeners from ``[docker]`` (``vspc.docker_config``): the Unix
socket with its mode, then its owner and group; TCP plain on loopback or TLS
with client certificates required. A listener that cannot be opened is a
``ConfigError`` naming the key. Each connection is one ``HttpConnection``
(``vspc.docker.http``) serving ``DockerApi`` (``vspc.docker.verbs``); past
``max-clients`` connections the one waiting longest for a request is closed
to make room, else the new one is closed at accept. ``unix_path`` and
``tcp_addresses`` say where it listens once started.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from common.io import tlsctx
from common.io.listen import listening
from common.io.unixlisten import UnixListener, open_unix_listener
from common.link.tls import refusal_reason
from common.ops.config import ConfigError
from common.ops.wiretext import wire
from vspc.docker.containers import Containers
from vspc.docker.hangup import tcp_keepalive
from vspc.docker.http import HttpConnection, Limits
from vspc.docker.verbs import DockerApi
from vspc.docker_config import DockerConfig, DockerTcpConfig
from vspc.guestinfo_watch import GuestinfoWatcher
from vspc.metrics import VspcMetrics
from vspc.revokedcut import RevokedCut
from vspc.sessions.api import SessionsApi
from vspc.sessions.service import SessionService
from vspc.tlsrefusals import tls_refused

log = logging.getLogger("vspc.docker")


class DockerMetrics:
    def __init__(self, metrics: VspcMetrics | None) -> None:
        self.m = metrics
        reg = metrics.registry if metrics is not None else CollectorRegistry()
        self.requests = Counter(
            "vspc_docker_requests_total",
            "Docker API requests answered, by verb and status class",
            ["verb", "status"],
            registry=reg,
        )
        self.clients = Gauge("vspc_docker_clients", "Docker API connections open", registry=reg)

    def request(self, verb: str, status: int) -> None:
        self.requests.labels(verb, f"{status // 100}xx" if status else "none").inc()

    def protocol_error(self) -> None:
        if self.m is not None:
            self.m.protocol_errors_total.labels("docker").inc()


def _tls_context(config: DockerConfig) -> ssl.SSLContext | None:
    tcp = config.tcp
    if tcp is None or tcp.tls is None:
        return None
    tls = tcp.tls
    try:
        ctx = tlsctx.server_context(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("docker.tcp.tls.cert", f"cannot load the certificates: {e}") from None
    assert tls.client_ca is not None  # DockerTcpConfig.validate
    try:
        tlsctx.require_client_certs(ctx, tls.client_ca)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("docker.tcp.tls.client-ca", f"cannot load: {e}") from None
    return ctx


@dataclass
class Served:
    """A listener being accepted on: with its TLS context and its accept loop's scope."""

    listener: trio.abc.Listener[Any]
    ctx: ssl.SSLContext | None
    scope: trio.CancelScope

    @property
    def unix(self) -> bool:
        return isinstance(self.listener, UnixListener)


class DockerServer:
    def __init__(
        self,
        config: DockerConfig,
        sessions: SessionService | None,
        *,
        guestinfo: GuestinfoWatcher | None = None,
        metrics: VspcMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        gi = guestinfo if guestinfo is not None else (sessions.guestinfo if sessions else None)
        self.containers = Containers(SessionsApi(sessions) if sessions else None, gi)
        self.metrics = DockerMetrics(metrics)
        self.api = DockerApi(self.containers, clock=clock, on_request=self.metrics.request)
        self.limits = Limits(
            max_header_bytes=config.max_header_bytes, request_timeout=config.request_timeout
        )
        self.unix_path: Path | None = None
        self.tcp_addresses: list[tuple[str, int]] = []
        self._conns: trio.Nursery | None = None
        self._accepting = trio.CancelScope()
        self._accepts: trio.Nursery | None = None  # the accept loops' (None: not accepting)
        self.listeners: list[Served] = []  # accepting now
        self._closed = trio.Event()  # the listeners are closed
        self.clients = 0  # connections open now
        self.clients_changed = trio.Event()  # set (and replaced) as that changes
        self._http: set[HttpConnection] = set()  # the connections, to make room among
        ca = config.tcp.tls.client_ca if config.tcp and config.tcp.tls else None
        registry = metrics.registry if metrics is not None else None
        self.revoked_cut = RevokedCut(registry, "docker", ca)  # live TLS clients

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen (a listener that cannot be opened: ``ConfigError``), then serve until
        cancelled; ``stop_listening`` stops accepting, connections carry on."""
        ctx = _tls_context(self.config)
        listeners: list[tuple[trio.abc.Listener[Any], ssl.SSLContext | None]] = []
        async with trio.open_nursery() as conns:
            self._conns = self.api.execs.nursery = conns  # detached execs run there too
            try:
                await self._open(listeners, ctx)
                with self._accepting:
                    async with trio.open_nursery() as nursery:
                        self._accepts = nursery
                        for lst, lctx in listeners:
                            self.start_accepting(lst, lctx)
                        self._log_listening(ctx)
                        task_status.started(self)
            finally:
                self._accepts = None
                for served in self.listeners:
                    await trio.aclose_forcefully(served.listener)
                self.listeners.clear()
                for lst, _ in listeners:  # any opened before a failure
                    await trio.aclose_forcefully(lst)
                self._closed.set()
            await trio.sleep_forever()  # the connections carry on until the service ends

    async def _open(
        self,
        listeners: list[tuple[trio.abc.Listener[Any], ssl.SSLContext | None]],
        ctx: ssl.SSLContext | None,
    ) -> None:
        cfg = self.config
        if cfg.socket is not None:
            listeners.append((await self.open_unix(cfg), None))
        if cfg.tcp is not None:
            listeners += [(lst, ctx) for lst in await self.open_tcp(cfg.tcp)]

    async def open_tcp(self, tcp: DockerTcpConfig) -> list[trio.SocketListener]:
        where = f"{tcp.host}:{tcp.port}"
        with listening("docker.tcp.port", host_key="docker.tcp.host", where=where):
            found = await trio.open_tcp_listeners(tcp.port, host=tcp.host)
        self.tcp_addresses = [lst.socket.getsockname()[:2] for lst in found]
        return found

    def start_accepting(self, lst: trio.abc.Listener[Any], ctx: ssl.SSLContext | None) -> None:
        """Accept on ``lst`` (TLS with ``ctx``) until ``stop_accepting``."""
        assert self._accepts is not None
        served = Served(lst, ctx, trio.CancelScope())
        self.listeners.append(served)

        async def loop() -> None:
            with served.scope:
                await self._accept(lst, ctx)

        self._accepts.start_soon(loop)

    @property
    def accepting(self) -> bool:
        """Listening now (not before ``run`` started, nor after ``stop_listening``)."""
        return self._accepts is not None

    def stop_accepting(self, served: Served) -> None:
        """No more accepting on ``served`` (its listener stays open: the caller's)."""
        served.scope.cancel()
        self.listeners.remove(served)

    def _log_listening(self, ctx: ssl.SSLContext | None) -> None:
        where = [f"unix:{self.unix_path}"] if self.unix_path is not None else []
        where += [f"tcp:{h}:{p}{' (TLS)' if ctx else ''}" for h, p in self.tcp_addresses]
        log.info("docker endpoint: %s", " ".join(where))

    async def stop_listening(self) -> None:
        """Stop accepting (the socket path goes); open connections carry on."""
        self._accepting.cancel()
        await self._closed.wait()

    async def open_unix(self, cfg: DockerConfig) -> trio.abc.Listener[Any]:
        assert cfg.socket is not None
        with listening("docker.socket", where=str(cfg.socket)):
            cfg.socket.parent.mkdir(parents=True, exist_ok=True)
            lst = await open_unix_listener(cfg.socket, mode=cfg.socket_mode)
            uid, gid = cfg.owner_ids()
            if (uid, gid) != (-1, -1):
                try:
                    os.chown(cfg.socket, uid, gid)
                except OSError:
                    await lst.aclose()
                    raise
        self.unix_path = cfg.socket
        return lst

    async def _accept(self, lst: trio.abc.Listener[Any], ctx: ssl.SSLContext | None) -> None:
        assert self._conns is not None
        while True:
            try:
                stream = await lst.accept()
            except OSError as e:  # EMFILE and friends: wait, do not spin
                log.warning("docker endpoint: accept failed: %s", e)
                await trio.sleep(0.1)
                continue
            if self.clients >= self.config.max_clients and not self._make_room():
                self.metrics.protocol_error()
                await trio.aclose_forcefully(stream)
                continue
            self._conns.start_soon(self._serve, stream, ctx)

    def _make_room(self) -> bool:
        """Evict the connection waiting longest for a request, if one is: a client
        that holds connections open without asking costs only those."""
        waiting = [c for c in self._http if c.waiting_since is not None and not c.evicted]
        if not waiting:
            return False
        min(waiting, key=lambda c: c.waiting_since or 0.0).evict()
        return True

    async def _serve(self, stream: trio.abc.Stream, ctx: ssl.SSLContext | None) -> None:
        self._count(+1)
        try:
            peer = _peer(stream)
            tcp_keepalive(stream, self.config.keepalive)  # a vanished TCP client times out
            if ctx is not None:
                stream = trio.SSLStream(stream, ctx, server_side=True)
                if not await self._handshake(stream, peer):
                    return
            conn = HttpConnection(
                stream,
                self.api.handle,
                self.limits,
                peer=peer,
                on_error=self.metrics.protocol_error,
            )
            self._http.add(conn)
            try:
                with trio.CancelScope() as live, self.revoked_cut.track(stream, peer, live):
                    await conn.serve()
            except (ssl.SSLError, trio.BrokenResourceError):
                self.metrics.protocol_error()  # a failed TLS handshake: its own connection
            finally:
                self._http.discard(conn)
        finally:
            self._count(-1)

    async def _handshake(self, tls: trio.SSLStream[Any], peer: str) -> bool:
        """The TLS handshake within ``request-timeout``; a refusal is one WARNING
        line and ``vspc_tls_refused_total{listener="docker",reason}``."""
        try:
            with trio.fail_after(self.config.request_timeout):
                await tls.do_handshake()
            return True
        except (trio.BrokenResourceError, trio.TooSlowError) as e:
            self._refused(peer, e)
        await trio.aclose_forcefully(tls)
        return False

    def _refused(self, peer: str, e: BaseException) -> None:
        reason = refusal_reason(e)
        log.warning(
            "docker client %s: TLS refused (%s): %s", peer, reason, wire(str(e.__cause__ or e))
        )
        if self.metrics.m is not None:
            tls_refused(self.metrics.m.registry).labels("docker", reason).inc()

    def _count(self, n: int) -> None:
        self.clients += n
        self.metrics.clients.inc(n)
        self.clients_changed.set()
        self.clients_changed = trio.Event()


def _peer(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    try:
        name = sock.getpeername() if sock is not None else ""
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return "unix" if not name else str(name)
