"""The pump's userspace copy path (TLS, in-memory streams, anything not fd-backed).

Large buffers come from a shared pool only while data flows. ``copy_loop``
picks the loop for a pair of streams; each loop sends through ``send`` and
counts through ``moved`` (the pump's own, once per chunk).
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

import trio

COPY_BUFFER_SIZE = 256 * 1024
# reads of the owned path (into objects the destination keeps): larger, since they
# are allocated per read and shrunk to what came; a peer link's per-chunk work
# (frames, writer turns) then goes with a quarter of the chunks
OWNED_READ_SIZE = 1024 * 1024

Send = Callable[[trio.abc.Stream, bytes | bytearray | memoryview], Awaitable[None]]
Moved = Callable[[str, int], None]
CopyLoop = Callable[[trio.abc.Stream, trio.abc.Stream, str, Send, Moved], Awaitable[None]]

_SAFE_SEND_TYPES: tuple[type, ...] = (
    trio.SocketStream,
    trio.SSLStream,
    trio.lowlevel.FdStream,
)


class _BufferPool:
    """Large copy buffers, reused across streams and held only while data moves."""

    def __init__(self, size: int, max_idle: int) -> None:
        self.size = size
        self.max_idle = max_idle
        self._idle: list[memoryview] = []

    def acquire(self) -> memoryview:
        return self._idle.pop() if self._idle else memoryview(bytearray(self.size))

    def release(self, view: memoryview) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append(view)


_buffers = _BufferPool(COPY_BUFFER_SIZE, 16)


def _eof_errno(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, OSError) and cause.errno == errno.EIO


def copy_loop(src: trio.abc.Stream, dst: trio.abc.Stream) -> CopyLoop:
    """The copy loop for ``src`` -> ``dst``."""
    if not isinstance(src, trio.SocketStream):
        return _copy_stream
    if isinstance(dst, _SAFE_SEND_TYPES):
        return _copy_pooled
    return _copy_owned


async def _copy_owned(
    src: trio.abc.Stream, dst: trio.abc.Stream, name: str, send: Send, moved: Moved
) -> None:
    # The destination keeps what it is given (a peer link's replay buffer):
    # each read lands in a bytes object of its own, the one copy out of the
    # kernel, instead of a pooled buffer copied again.
    assert isinstance(src, trio.SocketStream)
    sock = src.socket
    while True:
        owned = await sock.recv(OWNED_READ_SIZE)
        if not owned:
            return
        await send(dst, owned)
        moved(name, len(owned))


async def _copy_pooled(
    src: trio.abc.Stream, dst: trio.abc.Stream, name: str, send: Send, moved: Moved
) -> None:
    # The destination does not keep the view it is given. A buffer is held only
    # while data flows: after a short read (the socket is drained) it goes back
    # to the pool before waiting again.
    assert isinstance(src, trio.SocketStream)
    sock = src.socket
    view: memoryview | None = None
    try:
        while True:
            if view is None:
                await trio.lowlevel.wait_readable(sock)
                view = _buffers.acquire()
            n = await sock.recv_into(view)
            if not n:
                return
            await send(dst, view[:n])
            moved(name, n)
            if n < len(view):
                _buffers.release(view)
                view = None
    finally:
        if view is not None:
            _buffers.release(view)


async def _copy_stream(
    src: trio.abc.Stream, dst: trio.abc.Stream, name: str, send: Send, moved: Moved
) -> None:
    # a source that hands out what it holds (a resumable stream) says how much to ask
    # for, so that a large payload is not cut (and copied) to our buffer size
    size = int(getattr(src, "receive_size", COPY_BUFFER_SIZE))
    # (a plaintext peer link may splice payloads into the socket while we wait)
    sock = getattr(dst, "socket", None)  # (a trio.SocketStream, relay.pump_peer's VmView)
    direct = getattr(src, "deliver_to", None) if isinstance(sock, trio.socket.SocketType) else None
    if direct is not None:
        direct(sock.fileno(), lambda k: moved(name, k))  # type: ignore[union-attr]
    try:
        while True:
            try:
                data = await src.receive_some(size)
            except trio.BrokenResourceError as exc:
                if _eof_errno(exc):  # pty master: the slave side closed
                    return
                raise
            if not data:
                return
            await send(dst, data)
            moved(name, len(data))
    finally:
        if direct is not None:
            direct(None)
