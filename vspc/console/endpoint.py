"""Console endpoint listeners: a Unix socket with file permissions, TCP with mutual TLS."""

from __future__ import annotations

import errno
import os
import socket as _socket
import ssl
import stat
from pathlib import Path

import trio

from vic.ops.config import ConfigError
from vic.ops.listen import listening
from vspc.console.config import ConsoleTcpConfig


class EndpointError(ConfigError):
    """A listener could not be opened (a ConfigError naming the console key)."""


def server_ssl_context(tcp: ConsoleTcpConfig) -> ssl.SSLContext:
    """Server certificate, and client certificates required, signed by ``client_ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(tcp.cert), str(tcp.key))
    except (OSError, ssl.SSLError) as e:
        raise EndpointError("console.tcp.cert", f"cannot load {tcp.cert} / {tcp.key}: {e}") from None
    try:
        ctx.load_verify_locations(cafile=str(tcp.client_ca))
    except (OSError, ssl.SSLError) as e:
        raise EndpointError("console.tcp.client-ca", f"cannot load {tcp.client_ca}: {e}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _in_use(path: Path) -> bool:
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
    except OSError:
        return False
    else:
        return True
    finally:
        s.close()


class UnixListener:
    """A listening Unix socket created with its final mode (bind to a temp name, chmod, rename)."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        self.mode = mode
        self.listener: trio.SocketListener | None = None
        self._ino: int | None = None

    async def open(self) -> trio.SocketListener:
        path = self.path
        with listening("console.socket", where=str(path), error=EndpointError):
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise EndpointError("console.socket", f"{path} exists and is not a socket")
            if await trio.to_thread.run_sync(_in_use, path):
                raise EndpointError("console.socket", f"{path} is in use by another process")
            path.unlink()
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            await sock.bind(str(tmp))
            os.chmod(tmp, self.mode)
            os.rename(tmp, path)
            self._ino = os.stat(path).st_ino
            sock.listen(_socket.SOMAXCONN)
        except OSError as e:
            sock.close()
            tmp.unlink(missing_ok=True)
            if e.errno == errno.ENAMETOOLONG or "too long" in str(e):
                raise EndpointError("console.socket", f"socket path too long: {path}") from None
            raise EndpointError("console.socket", f"cannot listen on {path}: {e}") from None
        self.listener = trio.SocketListener(sock)
        return self.listener

    async def aclose(self) -> None:
        if self.listener is not None:
            await self.listener.aclose()
            self.listener = None
        try:
            if self._ino is not None and os.stat(self.path).st_ino == self._ino:
                self.path.unlink()
        except FileNotFoundError:
            pass


async def open_tcp(tcp: ConsoleTcpConfig) -> list[trio.SocketListener]:
    with listening("console.tcp.port", host_key="console.tcp.host", where=f"{tcp.host}:{tcp.port}",
                   error=EndpointError):
        return await trio.open_tcp_listeners(tcp.port, host=tcp.host)
