"""The fast socket path: socket calls for hot loops without trio's per-call machinery.

Every trio socket operation goes through the scheduler, even when the syscall
succeeds at once (and a ``trio.SocketStream`` call adds a conflict detector,
error translation and a cancel/yield sandwich; its ``send_all`` makes one such
call per partial send). A peer link moving hundreds of MB/s, the vSPC's ESX
reader and its console clients' senders make thousands of calls a second, and
a scheduler round costs more than the syscall. ``FastSocket`` makes the
non-blocking call itself on the trio socket's own stdlib socket and waits
through trio (``wait_readable`` / ``wait_writable``) only when the kernel says it
would block.

One object, two sets of calls:

* Raw calls, for the peer link's loops (``recv_into``, ``try_recv_into``,
  ``send_parts``, ``try_send``): no yield unless they block, no error
  translation. Callers that loop without blocking must checkpoint now and then
  (``Yielder``), so other tasks still run.
* Stream calls, with trio's contract (``receive_some``, ``send_all``): trio's
  error translation, a check for cancellation before the syscall, and trio's
  scheduling where it matters. ``receive_some`` yields exactly once per call
  (while waiting for the socket, else after the syscall), so whoever the reader
  wakes (a console client's sender) still runs between two of its reads: a
  client is not dropped as "slow" because the reader read twice in a row.
  ``send_all`` yields when it has to wait for the socket, and otherwise only
  every ``YIELD_EVERY`` calls (a sender only runs while its queue has bytes,
  which only other tasks add, so it cannot starve them for long). Streams of
  any other kind (TLS, prefixed relayed streams, test streams) keep their own
  methods: see ``receiver`` and ``sender``.

Not a duplicate fd: trio's epoll registrations rely on ``close()`` removing the
fd from the epoll set, which a second fd on the same socket would prevent.
``fast_socket()`` returns None when the trio socket does not expose its stdlib
socket (another trio version): callers then use the trio calls.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Awaitable, Callable, Sequence

import trio

IOV_MAX = 512
Buffer = bytes | bytearray | memoryview
ReceiveSome = Callable[[int], Awaitable[bytes | bytearray]]
SendAll = Callable[[Buffer], Awaitable[None]]
SendParts = Callable[[Sequence[Buffer]], Awaitable[None]]

#: Stream sends that completed without waiting between two voluntary yields.
YIELD_EVERY = 8

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


#: Send buffer asked for a Unix socket that bulk is written into (see ``grow_unix_sndbuf``).
BULK_UNIX_SNDBUF = 1 << 20


def grow_unix_sndbuf(tsock: trio.socket.SocketType, size: int = BULK_UNIX_SNDBUF) -> None:
    """Raise a Unix stream socket's send buffer to ``size`` (the kernel doubles it,
    capped by net.core.wmem_max); other families are left alone.

    A Unix stream socket queues at most its sender's SO_SNDBUF (wmem_default,
    ~208 KiB) at the receiver, so a bulk writer blocks, and goes back through the
    event loop, every ~200 KiB. Memory is charged only while bytes are queued.
    TCP is left alone: a fixed SO_SNDBUF would switch off its autotuning.
    """
    if tsock.family != socket.AF_UNIX:
        return
    with contextlib.suppress(OSError):
        if tsock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < 2 * size:
            tsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def stdlib_socket(tsock: trio.socket.SocketType) -> socket.socket | None:
    """trio's own non-blocking stdlib socket under ``tsock``; None on a trio that
    does not keep one (callers then use trio's calls)."""
    sock = getattr(tsock, "_sock", None)
    if not isinstance(sock, socket.socket) or sock.getblocking():
        return None
    return sock


def fast_socket(tsock: trio.socket.SocketType) -> FastSocket | None:
    """The fast path on ``tsock``; None when trio keeps no stdlib socket under it."""
    sock = stdlib_socket(tsock)
    return None if sock is None else FastSocket(tsock, sock)


def _stream_error(e: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    """What ``trio.SocketStream`` raises for ``e``."""
    if e.errno == errno.EBADF:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {e}")


class FastSocket:
    __slots__ = ("_n", "sock", "tsock")

    def __init__(self, tsock: trio.socket.SocketType, sock: socket.socket) -> None:
        self.tsock = tsock
        self.sock = sock  # trio's own (non-blocking); trio closes it
        self._n = 0  # stream sends since the last yield

    # ------------------------------------------------------------- raw calls
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

    async def send_parts(self, parts: Sequence[Buffer]) -> None:
        """Send the concatenation of ``parts`` (vectored, without joining them)."""
        views = [memoryview(p) for p in parts]
        while True:
            self.try_send(views)
            if not views:
                return
            await trio.lowlevel.wait_writable(self.tsock)

    # ------------------------------------------------------------- stream calls
    async def receive_some(self, size: int) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            data = self.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            raise _stream_error(e) from e
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        while True:
            try:
                await trio.lowlevel.wait_readable(self.tsock)
            except OSError as e:  # closed meanwhile
                raise _stream_error(e) from e
            try:
                return self.sock.recv(size)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                raise _stream_error(e) from e

    async def send_all(self, data: Buffer) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self.sock
        mv = memoryview(data)
        waited = False
        while True:
            try:
                n = sock.send(mv)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                raise _stream_error(e) from e
            if n >= len(mv):
                break
            mv = mv[n:]
            await self._wait_writable()
            waited = True
        await self._sent(waited)

    async def send_all_parts(self, parts: Sequence[Buffer]) -> None:
        """``send_all`` of the concatenation of ``parts``, vectored (no join, no copy)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        views = [memoryview(p) for p in parts]
        waited = False
        while True:
            try:
                self.try_send(views)
            except OSError as e:
                raise _stream_error(e) from e
            if not views:
                break
            await self._wait_writable()
            waited = True
        await self._sent(waited)

    async def _wait_writable(self) -> None:
        try:
            await trio.lowlevel.wait_writable(self.tsock)
        except OSError as e:
            raise _stream_error(e) from e

    async def _sent(self, waited: bool) -> None:
        """After a stream send: yield every YIELD_EVERY sends that did not wait."""
        if waited:
            self._n = 0
            return
        self._n += 1
        if self._n >= YIELD_EVERY:
            self._n = 0
            await trio.lowlevel.cancel_shielded_checkpoint()  # the bytes are sent


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


def _stream_socket(stream: trio.abc.Stream) -> FastSocket | None:
    if type(stream) is not trio.SocketStream:
        return None
    return fast_socket(stream.socket)


def receiver(stream: trio.abc.Stream) -> ReceiveSome:
    """``stream.receive_some``, or the same without trio's per-call machinery."""
    fast = _stream_socket(stream)
    return stream.receive_some if fast is None else fast.receive_some


def sender(stream: trio.abc.Stream) -> SendAll:
    """``stream.send_all``, or the same without trio's per-call machinery."""
    fast = _stream_socket(stream)
    return stream.send_all if fast is None else fast.send_all


def parts_sender(stream: trio.abc.Stream) -> SendParts:
    """Send a list of buffers as one stream of bytes: vectored (``sendmsg``, no
    join) on a plain socket stream; joined into one ``send_all`` on any other."""
    fast = _stream_socket(stream)
    if fast is not None:
        return fast.send_all_parts

    async def send_joined(parts: Sequence[Buffer]) -> None:
        await stream.send_all(parts[0] if len(parts) == 1 else b"".join(parts))

    return send_joined
