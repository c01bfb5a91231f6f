"""Client side of the attach protocol (used by ``vic console`` and the tests)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from common.io import tlsctx
from common.proto.console import protocol as proto


class ConsoleClientError(Exception):
    """The server refused the request, or the connection failed."""


@dataclass(frozen=True)
class Endpoint:
    """Where the console service listens: a Unix socket, or TCP with mutual TLS."""

    socket: Path | None = None
    host: str | None = None
    port: int | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    server_name: str | None = None

    def describe(self) -> str:
        if self.socket is not None:
            return str(self.socket)
        return f"{self.host}:{self.port}"


def client_ssl_context(ep: Endpoint) -> ssl.SSLContext:
    return tlsctx.client_context(ca=ep.ca, cert=ep.cert, key=ep.key, keylog=True)


async def connect(ep: Endpoint) -> trio.abc.Stream:
    try:
        if ep.socket is not None:
            return await trio.open_unix_socket(str(ep.socket))
        assert ep.host is not None and ep.port is not None
        tcp = await trio.open_tcp_stream(ep.host, ep.port)
        tls = trio.SSLStream(tcp, client_ssl_context(ep), server_hostname=ep.server_name or ep.host)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return tls
    except (OSError, ssl.SSLError, trio.BrokenResourceError) as e:
        raise ConsoleClientError(f"cannot connect to {ep.describe()}: {e}") from None


async def read_status(stream: trio.abc.Stream) -> tuple[dict[str, Any], bytes]:
    """The status line and whatever bytes followed it in the same read."""
    reader = proto.LineReader(16 * 1024 * 1024)
    try:
        while True:
            data = await stream.receive_some(64 * 1024)
            if not data:
                raise ConsoleClientError("connection closed before a status line")
            got = reader.feed(data)
            if got is not None:
                line, rest = got
                status = proto.decode_line(line)
                if not status.get("ok"):
                    raise ConsoleClientError(str(status.get("error", "refused")))
                return status, rest
    except proto.ProtocolError as e:
        raise ConsoleClientError(f"bad status line: {e}") from None
    except (trio.BrokenResourceError, ssl.SSLError) as e:
        raise ConsoleClientError(f"connection lost: {e}") from None


async def list_consoles(ep: Endpoint) -> list[dict[str, Any]]:
    stream = await connect(ep)
    async with stream:
        try:
            await stream.send_all(proto.encode_request(proto.ListRequest()))
        except (trio.BrokenResourceError, ssl.SSLError) as e:
            raise ConsoleClientError(f"connection lost: {e}") from None
        status, _ = await read_status(stream)
    consoles = status.get("consoles")
    if not isinstance(consoles, list):
        raise ConsoleClientError("bad list answer")
    return consoles


async def attach(
    ep: Endpoint, req: proto.AttachRequest
) -> tuple[trio.abc.Stream, dict[str, Any], bytes]:
    """Open an attach session: (stream, status, first stream bytes)."""
    stream = await connect(ep)
    try:
        try:
            await stream.send_all(proto.encode_request(req))
        except (trio.BrokenResourceError, ssl.SSLError) as e:
            raise ConsoleClientError(f"connection lost: {e}") from None
        status, rest = await read_status(stream)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, status, rest
