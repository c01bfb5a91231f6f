"""One attach connection's plumbing: its request line, error replies, and who the peer is."""

from __future__ import annotations

import socket as _socket
import ssl
import struct
from typing import Any

import trio

from common.io import fastsock
from common.proto.console import protocol as proto

RECV_SIZE = 64 * 1024


async def read_request_line(stream: trio.abc.Stream) -> tuple[bytes, bytes]:
    reader = proto.LineReader()
    while True:
        data = await stream.receive_some(RECV_SIZE)
        if not data:
            raise proto.ProtocolError("connection closed before a request line")
        got = reader.feed(data)
        if got is not None:
            return got


async def send_error(stream: trio.abc.Stream, message: str) -> None:
    with trio.move_on_after(2):
        try:
            await stream.send_all(proto.encode_line({"ok": False, "error": message}))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass


def peer_name(stream: trio.SocketStream) -> str:
    """``host:port`` for TCP; ``unix uid=U pid=P`` (from SO_PEERCRED) for a Unix socket."""
    sock = stream.socket
    try:
        name = sock.getpeername()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    try:
        cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", cred)
    except (OSError, AttributeError, struct.error):
        return "unix"
    return f"unix uid={uid} pid={pid}"


def tls_peer(tls: trio.SSLStream[Any], fallback: str) -> str:
    try:
        cert = tls.getpeercert()
    except (ValueError, AttributeError):
        return fallback
    if not cert:
        return fallback
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return f"{fallback} cn={v}"
    return fallback


def grow_sndbuf(stream: trio.SocketStream, queue_bytes: int) -> None:
    """Fewer, larger sends to a local (Unix) client: its socket may hold up to
    as much again as its queue (at most 2 x fastsock.BULK_UNIX_SNDBUF), so a
    stalled client still costs at most about twice ``client-queue-bytes``."""
    fastsock.grow_unix_sndbuf(stream.socket, min(fastsock.BULK_UNIX_SNDBUF, queue_bytes // 2))
