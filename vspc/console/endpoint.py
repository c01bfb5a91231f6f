"""Console endpoint listeners: a Unix socket with file permissions, TCP with mutual TLS."""

from __future__ import annotations

import ssl
from pathlib import Path

import trio

from common.io import tlsctx
from common.io.listen import listening
from common.io.unixlisten import UnixListener, open_unix_listener
from common.ops.config import ConfigError
from vspc.console.config import ConsoleTcpConfig


class EndpointError(ConfigError):
    """A listener could not be opened (a ConfigError naming the console key)."""


def server_ssl_context(tcp: ConsoleTcpConfig) -> ssl.SSLContext:
    """Server certificate, and client certificates required, signed by ``client_ca``."""
    try:
        ctx = tlsctx.server_context(tcp.cert, tcp.key)
    except (OSError, ssl.SSLError) as e:
        raise EndpointError(
            "console.tcp.cert", f"cannot load {tcp.cert} / {tcp.key}: {e}"
        ) from None
    try:
        tlsctx.require_client_certs(ctx, tcp.client_ca)
    except (OSError, ssl.SSLError) as e:
        raise EndpointError("console.tcp.client-ca", f"cannot load {tcp.client_ca}: {e}") from None
    return ctx


async def open_unix(path: Path, mode: int) -> UnixListener:
    """The console socket with mode ``mode``, its directory created if missing."""
    with listening("console.socket", where=str(path), error=EndpointError):
        path.parent.mkdir(parents=True, exist_ok=True)
        return await open_unix_listener(path, mode=mode)


async def open_tcp(tcp: ConsoleTcpConfig) -> list[trio.SocketListener]:
    with listening(
        "console.tcp.port",
        host_key="console.tcp.host",
        where=f"{tcp.host}:{tcp.port}",
        error=EndpointError,
    ):
        return await trio.open_tcp_listeners(tcp.port, host=tcp.host)
