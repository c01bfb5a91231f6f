"""Egress: open the connection to the appliance for one forwarded stream.

Kinds: TCP (optionally TLS), Unix socket, AF_VSOCK (CID, port), and hybrid vsock
(connect to a VM's Unix socket, ``CONNECT <port>\\n``, read ``OK <n>\\n``) for an
appliance that runs in a Firecracker / Cloud Hypervisor VM. Whatever the kind,
the relay's origin header is the first thing sent, before any byte of the VM.

The caller bounds the whole of ``open_egress`` with its connect timeout: a muxer
that never answers is a timeout, an over-long or malformed reply a HybridError.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import trio

from common.proto.link.header import OriginHeader, encode_header
from relay.config import EgressConfig
from relay.core.hybrid import HybridReplyParser, connect_request

HANDSHAKE_READ = 256


@dataclass(slots=True)
class EgressConnection:
    """A connected egress. ``pending`` holds stream bytes that arrived with the
    handshake reply (hybrid vsock); the caller delivers them to the VM side first."""

    stream: trio.abc.Stream
    pending: bytes = b""
    ok_port: int | None = None


async def _open_vsock(cid: int, port: int) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        await sock.connect((cid, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def open_tcp(host: str, port: int) -> trio.SocketStream:
    """A TCP connection; an IP literal skips trio's happy-eyeballs machinery (a
    nursery and a task per attempt), which matters when thousands connect at once."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def hybrid_connect(path: str, port: int) -> EgressConnection:
    """Host-initiated hybrid vsock: returns the raw stream to guest ``port``."""
    stream = await trio.open_unix_socket(path)
    try:
        await stream.send_all(connect_request(port))
        parser = HybridReplyParser()
        while True:
            data = await stream.receive_some(HANDSHAKE_READ)
            if not data:
                raise parser.eof_error()
            ok, rest = parser.feed(data)
            if ok is not None:
                return EgressConnection(stream, rest, ok)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def open_egress(cfg: EgressConfig, header: OriginHeader) -> EgressConnection:
    """Connect, complete any handshake, send the origin header."""
    head = encode_header(header)
    conn: EgressConnection
    if cfg.kind == "tcp":
        tcp = await open_tcp(cfg.host, cfg.port)
        if cfg.tls is not None:
            tls = trio.SSLStream(
                tcp,
                cfg.tls.context(),
                server_hostname=cfg.tls.server_name or cfg.host,
                https_compatible=False,
            )
            conn = EgressConnection(tls)
        else:
            conn = EgressConnection(tcp)
    elif cfg.kind == "unix":
        conn = EgressConnection(await trio.open_unix_socket(str(cfg.path)))
    elif cfg.kind == "vsock":
        conn = EgressConnection(await _open_vsock(cfg.cid, cfg.port))
    else:
        conn = await hybrid_connect(str(cfg.path), cfg.port)
    try:
        await conn.stream.send_all(head)
    except BaseException:
        await trio.aclose_forcefully(conn.stream)
        raise
    return conn
