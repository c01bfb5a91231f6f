"""Notice a hijacked client that is gone, even after it half-closed.

The docker client half-closes a hijacked connection as soon as its input ends
(``docker exec`` without ``-i`` at once), so reading EOF does not mean it left;
a client killed meanwhile is seen only at the next write, and a quiet process
writes nothing. Linux reports ``EPOLLHUP`` on a Unix socket once both
directions are shut (the peer closed it), never for a half-close: a private
epoll set holding only the socket, with no events asked (HUP and ERR always
come), is readable exactly then. ``until_hangup(stream, fn)`` runs ``fn`` and
cancels it when that happens. A stream without a socket (or a TCP peer, whose
close is a FIN like a half-close) is noticed at the next write only.
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


async def wait_hangup(stream: trio.abc.Stream) -> None:
    """Return once the peer of a Unix socket stream closed it (see the module doc)."""
    sock = _socket_of(stream)
    if sock is None or sock.family != socket.AF_UNIX:
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
