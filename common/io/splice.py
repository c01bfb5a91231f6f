"""Zero-copy fast path: move bytes fd -> pipe -> fd with os.splice under trio.

Bulk data is spliced; small interactive messages are read and written directly
(cheaper for a few bytes), switching per burst.

Works between fd-backed raw streams: trio.SocketStream over TCP, Unix or vsock,
trio.lowlevel.FdStream (pipes, FIFOs, ptys) and StapledStreams of those. The
pipe comes from a PipePool while data moves and goes back as soon as it is
empty and the source would block.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from common.io import fastsock
from common.io.pipepool import Pipe, PipePool

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# Yield to other tasks after this many bytes moved without blocking.
YIELD_EVERY = 4 << 20
# A read smaller than this means the source is (almost surely) empty: interactive
# traffic goes straight back to waiting instead of paying for an EAGAIN first.
SMALL_READ = 16 << 10
# Interactive traffic (a burst under this size) is moved with a plain read and
# write: for a few bytes that is cheaper than two splices, which must allocate
# pipe pages. A read that fills PROBE_SIZE switches the direction to splicing
# until a burst comes in under it again.
PROBE_SIZE = 64 << 10
# Once a direction turns bulk, its destination's SO_SNDBUF is raised
# (fastsock.grow_unix_sndbuf: Unix sockets only; idle or interactive streams
# never turn bulk).
BULK_UNIX_SNDBUF = fastsock.BULK_UNIX_SNDBUF

_SPLICE_FAMILIES = {socket.AF_INET, socket.AF_INET6, socket.AF_UNIX}
if hasattr(socket, "AF_VSOCK"):
    _SPLICE_FAMILIES.add(socket.AF_VSOCK)

# A bulk burst: (src, dst, src_fd, dst_fd, pool, on_moved, stall_timeout) -> (EOF, moved)
Burst = Callable[
    [trio.abc.Stream, trio.abc.Stream, int, int, PipePool, Callable[[int], None], float | None],
    Awaitable[tuple[bool, int]],
]

# errno values on the read side that mean "the other end went away"
_READ_EOF_ERRNOS = {errno.EIO}  # pty master after the slave closed


class SpliceUnsupported(Exception):
    """The kernel cannot splice these fds; ``leftover`` was already read from the source."""

    def __init__(self, leftover: bytes) -> None:
        super().__init__("splice not supported for this fd pair")
        self.leftover = leftover


class WriteStalled(Exception):
    """A write waited longer than the stall timeout."""


class ReadWaitMark(Protocol):
    """Lets an idle direction be parked (relay.park): ``reading`` counts the
    directions blocked in their read wait (nothing in flight); ``parking`` set
    means "return instead of reading" once the wait ends."""

    reading: int
    parking: bool
    small_streak: int

    def interactive(self) -> None:
        """A small message was forwarded; the direction is about to wait."""


class WriterMark(Protocol):
    """Told when a direction waits to read (it writes nothing to its destination
    until it ``woke``): relay.pump_blocking lets the other direction's bulk thread
    read that socket in blocking mode meanwhile."""

    def waiting(self) -> None: ...

    def woke(self) -> None: ...


def _socket_fd(stream: trio.SocketStream) -> int | None:
    sock = stream.socket
    if sock.type != socket.SOCK_STREAM or sock.family not in _SPLICE_FAMILIES:
        return None
    fd = sock.fileno()
    return fd if fd >= 0 else None


def fd_layer(stream: object, *, receive: bool) -> trio.SocketStream | trio.lowlevel.FdStream | None:
    """The raw fd-backed stream *stream* reads through (``receive``) or writes
    through: itself, or that half of a ``StapledStream``; None when there is none."""
    while isinstance(stream, trio.StapledStream):
        stream = stream.receive_stream if receive else stream.send_stream
    if isinstance(stream, trio.SocketStream | trio.lowlevel.FdStream):
        return stream
    return None


def _fd_of(stream: trio.SocketStream | trio.lowlevel.FdStream | None) -> int | None:
    if isinstance(stream, trio.SocketStream):
        return _socket_fd(stream)
    if stream is None:
        return None
    fd = stream.fileno()
    return fd if fd >= 0 else None


def read_fd(stream: trio.abc.Stream | trio.abc.ReceiveStream) -> int | None:
    """The fd to splice from, if *stream* is a raw fd-backed stream; else None."""
    return _fd_of(fd_layer(stream, receive=True))


def write_fd(stream: trio.abc.Stream | trio.abc.SendStream) -> int | None:
    """The fd to splice into, if *stream* is a raw fd-backed stream; else None."""
    return _fd_of(fd_layer(stream, receive=False))


def _grow_unix_sndbuf(stream: trio.abc.Stream | trio.abc.SendStream) -> None:
    sock_stream = fd_layer(stream, receive=False)
    if isinstance(sock_stream, trio.SocketStream):
        fastsock.grow_unix_sndbuf(sock_stream.socket, BULK_UNIX_SNDBUF)


def _drain_pipe(pipe: Pipe, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        try:
            chunk = os.read(pipe.r, n - len(out))
        except BlockingIOError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


async def write_all(dst_fd: int, data: bytes, stall_timeout: float | None) -> None:
    """Write every byte of *data* to the non-blocking *dst_fd* (WriteStalled,
    trio.BrokenResourceError)."""
    view = memoryview(data)
    off = 0
    while off < len(view):
        try:
            off += os.write(dst_fd, view[off:])
        except BlockingIOError:
            await _wait_writable(dst_fd, stall_timeout)
        except OSError as exc:
            raise trio.BrokenResourceError(f"write failed: {exc}") from exc


async def _wait_writable(fd: int, stall_timeout: float | None) -> None:
    if stall_timeout is None:
        await trio.lowlevel.wait_writable(fd)
        return
    with trio.move_on_after(stall_timeout) as scope:
        await trio.lowlevel.wait_writable(fd)
    if scope.cancelled_caught:
        raise WriteStalled()


class _NoMark:
    """The ReadWaitMark of a direction that is never parked."""

    __slots__ = ("parking", "reading", "small_streak")

    def __init__(self) -> None:
        self.reading = 0
        self.parking = False
        self.small_streak = 0

    def interactive(self) -> None:
        pass


class _NoWriter:
    """The WriterMark of a direction nobody listens to."""

    __slots__ = ()

    def waiting(self) -> None:
        pass

    def woke(self) -> None:
        pass


_NO_WRITER = _NoWriter()


def _forward_now(src_fd: int, dst_fd: int) -> tuple[bytes, int] | None:
    """Read what the source has (up to PROBE_SIZE) and write what the destination
    takes now: (data, bytes written); (b"", 0) at EOF; None if the source is empty."""
    try:
        data = os.read(src_fd, PROBE_SIZE)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in _READ_EOF_ERRNOS:
            return b"", 0
        raise trio.BrokenResourceError(f"read failed: {exc}") from exc
    if not data:
        return data, 0
    try:
        written = os.write(dst_fd, data)
    except BlockingIOError:
        written = 0
    except OSError as exc:
        raise trio.BrokenResourceError(f"write failed: {exc}") from exc
    return data, written


async def splice_direction(
    src: trio.abc.Stream,
    dst: trio.abc.Stream,
    src_fd: int,
    dst_fd: int,
    pool: PipePool,
    *,
    on_moved: Callable[[int], None],
    stall_timeout: float | None,
    mark: ReadWaitMark | None = None,
    burst: Burst | None = None,
    writer: WriterMark | None = None,
) -> bool:
    """Move bytes from *src_fd* (of *src*) to *dst_fd* (of *dst*) until EOF on the source.

    Returns True on a clean EOF once every byte read has been written; False when
    *mark* asked to park (the source was empty, nothing in flight). Raises
    SpliceUnsupported (before the first byte, or with the bytes already read),
    WriteStalled, or trio.BrokenResourceError for a reset or closed peer. After
    every yield that is not an fd wait (a wait on an fd that another task closes
    raises ClosedResourceError by itself) the streams are checked to still own these
    fds, so a stream closed meanwhile is never spliced by a stale fd number. ``burst``
    moves bulk (default ``splice_burst``); ``writer`` hears of each read wait."""
    wait_mark: ReadWaitMark = _NoMark() if mark is None else mark
    bulk_burst = splice_burst if burst is None else burst
    wmark = _NO_WRITER if writer is None else writer
    bulk = grown = False  # (grown: the destination's send buffer was raised for bulk)
    while True:
        if bulk:
            if not grown:
                _grow_unix_sndbuf(dst)
                grown = True
            eof, moved = await bulk_burst(src, dst, src_fd, dst_fd, pool, on_moved, stall_timeout)
            if eof:
                return True
            bulk = moved >= PROBE_SIZE
        else:
            got = _forward_now(src_fd, dst_fd)
            if got is not None:
                data, written = got
                if not data:
                    return True
                if written < len(data):
                    await write_all(dst_fd, data[written:], stall_timeout)
                on_moved(len(data))
                bulk = len(data) == PROBE_SIZE
                del got, data  # not kept alive across the wait
                if bulk:
                    wait_mark.small_streak = 0
                    continue
                wait_mark.interactive()
        wait_mark.reading += 1
        wmark.waiting()
        try:
            await trio.lowlevel.wait_readable(src_fd)
        finally:
            wait_mark.reading -= 1
            wmark.woke()
        if wait_mark.parking:  # asked to park while the wait was ending: nothing read yet
            return False


def _splice_in(src_fd: int, pipe: Pipe, in_pipe: int, moved: int) -> int:
    """Splice from the source into the pipe: bytes spliced, 0 at EOF, -1 when the
    source is empty (or the pipe out of slots: drain first)."""
    try:
        return os.splice(src_fd, pipe.w, pipe.size - in_pipe, None, None, SPLICE_FLAGS)
    except BlockingIOError:
        return -1
    except OSError as exc:
        if exc.errno == errno.EINVAL and not moved:
            raise SpliceUnsupported(_drain_pipe(pipe, in_pipe)) from exc
        if exc.errno in _READ_EOF_ERRNOS:
            return 0
        raise trio.BrokenResourceError(f"read failed: {exc}") from exc


def _splice_out(pipe: Pipe, dst_fd: int, in_pipe: int) -> int:
    """Splice from the pipe into the destination: bytes spliced, -1 when it would block."""
    try:
        return os.splice(pipe.r, dst_fd, in_pipe, None, None, SPLICE_FLAGS)
    except BlockingIOError:
        return -1
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise SpliceUnsupported(_drain_pipe(pipe, in_pipe)) from exc
        raise trio.BrokenResourceError(f"write failed: {exc}") from exc


def _check_fds(src: trio.abc.Stream, dst: trio.abc.Stream, src_fd: int, dst_fd: int) -> None:
    """After a yield: the streams still own these fds (else they were closed)."""
    if read_fd(src) != src_fd or write_fd(dst) != dst_fd:
        raise trio.ClosedResourceError("stream closed during the pump")


def _end_burst(
    pool: PipePool, pipe: Pipe, in_pipe: int, unreported: int, on_moved: Callable[[int], None]
) -> None:
    if unreported:
        on_moved(unreported)
    if in_pipe:
        pool.discard(pipe)
    else:
        pool.release(pipe, empty=True)


async def _splice_burst(
    src: trio.abc.Stream,
    dst: trio.abc.Stream,
    src_fd: int,
    dst_fd: int,
    pool: PipePool,
    on_moved: Callable[[int], None],
    stall_timeout: float | None,
    limit: int = 1 << 62,
) -> tuple[bool, int]:
    """Splice until the source would block (-> (False, moved)) or ends (-> (True, moved)),
    or (no more reads once ``limit`` bytes moved) the pipe is empty after ``limit``.

    The pipe is taken from the pool for the burst and returned empty. Bytes
    moved are reported through ``on_moved`` before every yield (nobody else runs
    in between, so the counters are always current for any observer).
    """
    pipe = pool.acquire()
    cap = pipe.size
    in_pipe = moved = unreported = 0
    eof = False
    drained = False  # a small read just emptied the source: stop instead of retrying
    try:
        while True:
            progressed = False
            if not eof and not drained and in_pipe < cap and moved < limit:
                n = _splice_in(src_fd, pipe, in_pipe, moved)
                if n > 0:
                    in_pipe += n
                    progressed = True
                    drained = n < SMALL_READ
                elif n == 0:
                    eof = True
            if in_pipe:
                m = _splice_out(pipe, dst_fd, in_pipe)
                if m >= 0:
                    in_pipe -= m
                    moved += m
                    unreported += m
                    progressed = True
            if progressed:
                if unreported >= YIELD_EVERY:
                    on_moved(unreported)
                    unreported = 0
                    await trio.lowlevel.checkpoint()
                    _check_fds(src, dst, src_fd, dst_fd)
                continue
            if unreported:
                on_moved(unreported)
                unreported = 0
            if not in_pipe:
                return eof, moved
            drained = False
            await _wait_writable(dst_fd, stall_timeout)
    except SpliceUnsupported:
        in_pipe = 0  # drained into the exception's leftover
        raise
    finally:
        _end_burst(pool, pipe, in_pipe, unreported, on_moved)


splice_burst = _splice_burst
