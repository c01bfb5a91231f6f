"""The pump: full-duplex byte mover between two trio Streams.

* Each direction runs independently. EOF on one read side is propagated as
  ``send_eof()`` on the other stream when it is a HalfCloseableStream; when it
  is not, that stream is closed once both directions are done.
* Zero-copy fast path: when the source has a raw read fd and the destination a
  raw write fd (SocketStream over TCP/Unix/vsock, FdStream, StapledStream of
  those), bulk bytes go fd -> pipe -> fd with os.splice, and small interactive
  bursts by a direct read/write of the fds (see relay.splice). Anything else
  (TLS, in-memory streams) goes through a copy loop with large buffers taken
  from a shared pool only while data flows.
* Timeouts: ``idle_timeout`` (no byte moved in either direction) and
  ``stall_timeout`` (one write blocked that long) raise IdleTimeout /
  StallTimeout, both PumpTimeout (a TimeoutError), after closing both streams.
* A reset or closed peer on either side ends the whole pump quietly (both
  streams closed, ``counters.end_reason`` says why); pump returns normally.
* pump() always closes both streams before it returns or raises.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from relay.pipepool import PipePool, default_pool
from relay.splice import SpliceUnsupported, WriteStalled, read_fd, splice_direction, write_fd

log = logging.getLogger(__name__)

COPY_BUFFER_SIZE = 256 * 1024
CLOSE_TIMEOUT = 5.0  # bound on a graceful close (e.g. a TLS close_notify)
A_TO_B = "a_to_b"
B_TO_A = "b_to_a"


@dataclass
class PumpCounters:
    """Live counters, updated as bytes are delivered to the destination."""

    a_to_b: int = 0
    b_to_a: int = 0
    # At least one direction runs on the fd fast path (both ends fd-backed raw
    # streams): bulk bytes spliced zero-copy, small bursts read/written directly
    # on the fds. False: the userspace copy fallback (TLS, in-memory streams).
    spliced: bool = False
    on_bytes: Callable[[str, int], None] | None = field(default=None, repr=False)
    end_reason: str = ""  # "eof", "idle timeout", "write stall ...", "reset ...: <error>"

    def add(self, direction: str, n: int) -> None:
        if direction == A_TO_B:
            self.a_to_b += n
        else:
            self.b_to_a += n
        if self.on_bytes is not None:
            self.on_bytes(direction, n)


class PumpTimeout(TimeoutError):
    """The pump stopped because of a timeout (both streams are closed)."""


class IdleTimeout(PumpTimeout):
    pass


class StallTimeout(PumpTimeout):
    pass


class _Abort(Exception):
    """Internal: a direction failed; carries the reason."""


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


# trio sets TCP_NOTSENT_LOWAT to 16 KiB on every TCP SocketStream: fine for an
# application writing its own data, but for a relay it caps each send at 16 KiB
# of unsent data and costs ~40% more CPU per GiB. The pump restores a large
# value on TCP streams it writes to (the kernel default is "no limit").
NOTSENT_LOWAT = 1 << 30


def _unthrottle(stream: trio.abc.Stream) -> None:
    sock_stream: trio.abc.SendStream = stream
    if isinstance(stream, trio.StapledStream):
        sock_stream = stream.send_stream
    elif isinstance(stream, trio.SSLStream):
        sock_stream = stream.transport_stream
    if not isinstance(sock_stream, trio.SocketStream):
        return
    sock = sock_stream.socket
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(
        socket, "TCP_NOTSENT_LOWAT"
    ):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)


def _eof_errno(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, OSError) and cause.errno == errno.EIO


class _Session:
    def __init__(
        self,
        a: trio.abc.Stream,
        b: trio.abc.Stream,
        counters: PumpCounters,
        idle_timeout: float | None,
        stall_timeout: float | None,
        pool: PipePool,
        splice: bool,
    ) -> None:
        self.a = a
        self.b = b
        self.counters = counters
        self.idle_timeout = idle_timeout
        self.stall_timeout = stall_timeout
        self.pool = pool
        self.splice = splice
        self.failure: BaseException | None = None
        self.idle_timeout_s = idle_timeout if idle_timeout is not None else 0.0
        self.idle_scope: trio.CancelScope | None = None
        self._fast = 0  # directions on the fd fast path
        self.scope: trio.CancelScope | None = None

    def _moved(self, direction: str, n: int) -> None:
        """Counts delivered bytes (called once per burst or message, not per chunk)."""
        self.counters.add(direction, n)
        if self.idle_scope is not None:
            self.idle_scope.deadline = trio.current_time() + self.idle_timeout_s

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        assert self.scope is not None
        self.scope.cancel()

    async def direction(self, src: trio.abc.Stream, dst: trio.abc.Stream, name: str) -> None:
        try:
            _unthrottle(dst)
            rfd = read_fd(src) if self.splice else None
            wfd = write_fd(dst) if self.splice else None
            copy = True
            if rfd is not None and wfd is not None:
                self._fast += 1
                self.counters.spliced = True
                try:
                    await splice_direction(
                        src,
                        dst,
                        rfd,
                        wfd,
                        self.pool,
                        on_moved=functools.partial(self._moved, name),
                        stall_timeout=self.stall_timeout,
                    )
                    copy = False
                except SpliceUnsupported as exc:
                    log.debug("%s: splice unsupported, copying", name)
                    self._fast -= 1
                    self.counters.spliced = self._fast > 0
                    if exc.leftover:
                        await self._send(dst, exc.leftover)
                        self._moved(name, len(exc.leftover))
            if copy:
                await self._copy(src, dst, name)
        except WriteStalled:
            self._fail(StallTimeout(f"{name}: write stalled for over {self.stall_timeout}s"))
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(_Abort(f"reset {name}: {exc}"))
            return
        # Clean EOF on src, every byte delivered: propagate the half-close.
        if isinstance(dst, trio.abc.HalfCloseableStream):
            try:
                await dst.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.debug("send_eof after %s failed: %s", name, exc)

    async def _send(self, dst: trio.abc.Stream, data: bytes | bytearray | memoryview) -> None:
        if self.stall_timeout is None:
            await dst.send_all(data)
            return
        with trio.move_on_after(self.stall_timeout) as scope:
            await dst.send_all(data)
        if scope.cancelled_caught:
            raise WriteStalled()

    async def _copy(self, src: trio.abc.Stream, dst: trio.abc.Stream, name: str) -> None:
        safe_view = isinstance(dst, _SAFE_SEND_TYPES)
        if isinstance(src, trio.SocketStream):
            # A buffer is held only while data flows: after a short read (the
            # socket is drained) it goes back to the pool before waiting again.
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
                    await self._send(dst, view[:n] if safe_view else bytes(view[:n]))
                    self._moved(name, n)
                    if n < len(view):
                        _buffers.release(view)
                        view = None
            finally:
                if view is not None:
                    _buffers.release(view)
        while True:
            try:
                data = await src.receive_some(COPY_BUFFER_SIZE)
            except trio.BrokenResourceError as exc:
                if _eof_errno(exc):  # pty master: the slave side closed
                    return
                raise
            if not data:
                return
            await self._send(dst, data)
            self._moved(name, len(data))


async def _close(stream: trio.abc.Stream, graceful: bool) -> None:
    if not graceful:
        await trio.aclose_forcefully(stream)
        return
    with trio.move_on_after(CLOSE_TIMEOUT):  # aclose closes even when cancelled
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def pump(
    a: trio.abc.Stream,
    b: trio.abc.Stream,
    *,
    counters: PumpCounters | None = None,
    idle_timeout: float | None = None,
    stall_timeout: float | None = None,
    pipes: PipePool | None = None,
    splice: bool = True,
) -> None:
    """Move bytes both ways between *a* and *b* until both directions end.

    ``splice=False`` forces the copy path (for comparison and tests).
    Raises IdleTimeout / StallTimeout (PumpTimeout) on a timeout; returns
    normally on EOF both ways or on a reset peer. Closes both streams.
    """
    c = counters if counters is not None else PumpCounters()
    session = _Session(
        a, b, c, idle_timeout, stall_timeout, pipes if pipes is not None else default_pool(), splice
    )
    # Idle timeout: a deadline pushed forward whenever bytes move (no watchdog
    # task). One direction runs in this task, the other in one child task: an
    # idle stream costs two trio tasks and no pipe or buffer.
    if idle_timeout is not None:
        session.idle_scope = trio.CancelScope(deadline=trio.current_time() + idle_timeout)
    graceful = False
    try:
        with session.idle_scope or contextlib.nullcontext():
            async with trio.open_nursery() as nursery:
                session.scope = nursery.cancel_scope
                nursery.start_soon(session.direction, b, a, B_TO_A)
                await session.direction(a, b, A_TO_B)
        if (
            session.idle_scope is not None
            and session.idle_scope.cancelled_caught
            and session.failure is None
        ):
            session.failure = IdleTimeout(f"idle for {idle_timeout}s")
        failure = session.failure
        graceful = failure is None
    finally:
        try:
            await _close(a, graceful)
        finally:
            await _close(b, graceful)
    if failure is None:
        c.end_reason = "eof"
        return
    c.end_reason = str(failure) if not isinstance(failure, IdleTimeout) else "idle timeout"
    if isinstance(failure, PumpTimeout):
        raise failure
    log.debug("pump ended: %s", failure)


__all__ = [
    "IdleTimeout",
    "PipePool",
    "PumpCounters",
    "PumpTimeout",
    "StallTimeout",
    "pump",
]
