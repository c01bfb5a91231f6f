"""Notice a hijacked client that is gone, even after it half-closed.

The docker client half-closes a hijacked connection as soon as its input ends
(``docker exec`` without ``-i`` at once), so reading EOF does not mean it left;
a client killed meanwhile is seen only at the next write, and a quiet process
writes nothing. Linux reports ``EPOLLHUP`` on a Unix socket once both
directions are shut (the peer closed it), never for a half-close: a private
epoll set holding only the socket, with no events asked (HUP and ERR always
come), is readable exactly then. ``until_hangup(stream, fn)`` runs ``fn`` and
cancels it when that happens.

On TCP (and TLS over it) a peer's close is a FIN like a half-close, but a
connection that is reset or times out is shut both ways: ``EPOLLHUP`` then too.
``tcp_keepalive(stream, idle)`` (set by the server on each accepted TCP
connection) makes a peer that vanished (its host gone, the wire cut, a NAT that
forgot it) time out while the process writes nothing: a probe after ``idle``
seconds of silence, then every ``idle / 3`` (at least 1 s), dead after 3 unanswered;
``TCP_USER_TIMEOUT`` bounds data left unacknowledged the same way. A stream
without a socket is noticed at the next write only.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio


def _socket_of(stream: trio.abc.Stream) -> Any:
    inner = getattr(stream, "transport_stream", stream)  # trio.SSLStream
    return getattr(inner, "socket", None)


HANGUP_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)
KEEPALIVE_PROBES = 3


def tcp_keepalive(stream: trio.abc.Stream, idle: float) -> None:
    """Keepalive probes on a TCP stream's socket (see the module doc); others untouched."""
    sock = _socket_of(stream)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    idle_s = max(1, int(idle))
    interval = max(1, idle_s // 3)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        user_timeout_ms = (idle_s + interval * KEEPALIVE_PROBES) * 1000
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
    except OSError:
        pass  # the connection is already gone: the first read or write says so


async def wait_hangup(stream: trio.abc.Stream) -> None:
    """Return once the peer closed (Unix) or the connection died (TCP); see the
    module doc."""
    sock = _socket_of(stream)
    if sock is None or sock.family not in HANGUP_FAMILIES:
        await trio.sleep_forever()
    with select.epoll() as ep:
        ep.register(sock.fileno(), 0)
        await trio.lowlevel.wait_readable(ep.fileno())


async def until_hangup(stream: trio.abc.Stream, fn: Callable[[], Awaitable[None]]) -> bool:
    """Run ``fn``; cancel it if the client hangs up. False: it did."""
    gone = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal gone
            await wait_hangup(stream)
            gone = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await fn()
        nursery.cancel_scope.cancel()
    return not gone
