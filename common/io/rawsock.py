"""Socket calls for the peer link's hot loops, without trio's per-call checkpoint.

Every trio socket operation yields to the scheduler, even when the syscall
succeeds at once; a link moving hundreds of MB/s makes thousands of calls a
second, and a scheduler round costs more than the syscall. ``RawSocket`` makes
the non-blocking call itself on the trio socket's own stdlib socket and waits
through trio (``wait_readable`` / ``wait_writable``) only when the kernel says it
would block. Callers that loop without blocking must checkpoint now and then
(``Yielder``), so other tasks still run.

Not a duplicate fd: trio's epoll registrations rely on ``close()`` removing the
fd from the epoll set, which a second fd on the same socket would prevent.
``raw_socket()`` returns None when the trio socket does not expose its stdlib
socket (another trio version): callers then use the trio calls.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence

import trio

IOV_MAX = 512
Buffer = bytes | bytearray | memoryview


# trio sets TCP_NOTSENT_LOWAT to 16 KiB on every TCP SocketStream: fine for an
# application writing its own data, but a relay or a peer link writes large
# batches, and the low-water mark splits each into 16 KiB sends and wakeups
# (~40% more CPU per GiB). The kernel default is "no limit".
NOTSENT_LOWAT = 1 << 30


def unthrottle_tcp(tsock: trio.socket.SocketType) -> None:
    """Undo trio's TCP_NOTSENT_LOWAT on a TCP socket we write bulk into."""
    if tsock.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(
        socket, "TCP_NOTSENT_LOWAT"
    ):
        return
    with contextlib.suppress(OSError):
        tsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)


def stdlib_socket(tsock: trio.socket.SocketType) -> socket.socket | None:
    """trio's own non-blocking stdlib socket under ``tsock``; None on a trio that
    does not keep one (callers then use trio's calls)."""
    sock = getattr(tsock, "_sock", None)
    if not isinstance(sock, socket.socket) or sock.getblocking():
        return None
    return sock


def raw_socket(tsock: trio.socket.SocketType) -> RawSocket | None:
    sock = stdlib_socket(tsock)
    return None if sock is None else RawSocket(tsock, sock)


class RawSocket:
    def __init__(self, tsock: trio.socket.SocketType, sock: socket.socket) -> None:
        self.tsock = tsock
        self.sock = sock  # trio's own (non-blocking); trio closes it

    def try_recv_into(self, buf: memoryview) -> int | None:
        """Receive what is there now; None if nothing is (0 is the peer's EOF)."""
        try:
            return self.sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return None

    async def recv_into(self, buf: memoryview) -> int:
        while True:
            try:
                return self.sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                pass
            await trio.lowlevel.wait_readable(self.tsock)

    def try_send(self, views: list[memoryview]) -> None:
        """Send what the socket takes now; ``views`` keeps what it did not."""
        while views:
            try:
                n = (
                    self.sock.sendmsg(views[:IOV_MAX])
                    if len(views) > 1
                    else self.sock.send(views[0])
                )
            except (BlockingIOError, InterruptedError):
                return
            consume(views, n)

    async def send_all(self, parts: Sequence[Buffer]) -> None:
        views = [memoryview(p) for p in parts]
        while True:
            self.try_send(views)
            if not views:
                return
            await trio.lowlevel.wait_writable(self.tsock)


def consume(views: list[memoryview], n: int) -> None:
    """Drop the first ``n`` bytes sent from ``views`` (a partial send keeps the rest)."""
    i = 0
    while n and i < len(views):
        k = len(views[i])
        if n >= k:
            n -= k
            i += 1
        else:
            views[i] = views[i][n:]
            n = 0
    del views[:i]


class Yielder:
    """Checkpoint every ``every`` calls of ``maybe``, or once ``budget`` bytes went
    through since the last one (a loop that may never block must still let the
    tasks that consume what it moves run: a relay is a pipeline)."""

    def __init__(self, every: int = 16, budget: int = 256 * 1024) -> None:
        self.every = every
        self.budget = budget
        self._n = 0
        self._bytes = 0

    def reset(self) -> None:
        """The caller just blocked (it has yielded)."""
        self._n = 0
        self._bytes = 0

    async def maybe(self, nbytes: int = 0) -> None:
        self._n += 1
        self._bytes += nbytes
        if self._n >= self.every or self._bytes >= self.budget:
            self._n = 0
            self._bytes = 0
            await trio.lowlevel.checkpoint()
