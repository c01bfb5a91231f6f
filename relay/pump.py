"""The pump: full-duplex byte mover between two trio Streams.

* Each direction runs independently. EOF on one read side is propagated as
  ``send_eof()`` on the other stream when it is a HalfCloseableStream; when it
  is not, that stream is closed once both directions are done.
* Zero-copy fast path: when the source has a raw read fd and the destination a
  raw write fd (SocketStream over TCP/Unix/vsock, FdStream, StapledStream of
  those), bulk bytes go fd -> pipe -> fd with os.splice, and small interactive
  bursts by a direct read/write of the fds (see common.io.splice). Anything else
  (TLS, in-memory streams) goes through a copy loop with large buffers taken
  from a shared pool only while data flows.
* Idle parking (relay.park): a pump on the fd fast path with no byte moved for
  a sweep interval (0.25-0.5 s) stops its directions at their read wait and
  parks its source fds in one shared epoll set; only the caller's task remains
  (no second task, no nursery, no pipe or buffer) until a fd is readable.
  With a real clock the parker's reactor thread forwards a parked pump's small
  messages itself (no trio task switch per message), and a pump that forwards
  PARK_STREAK small messages in a row while its other direction waits parks at
  once: interactive traffic is relayed by the reactor, bulk by the pump's task.
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
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from common.io.fastsock import unthrottle_tcp
from common.io.pipepool import PipePool, default_pool
from common.io.splice import (
    SpliceUnsupported,
    WriteStalled,
    fd_layer,
    read_fd,
    splice_direction,
    write_all,
    write_fd,
)
from common.io.streamlayers import find_layer
from relay.park import NO_DST, Handoff, Parker, Route, current_parker

log = logging.getLogger(__name__)

COPY_BUFFER_SIZE = 256 * 1024
CLOSE_TIMEOUT = 5.0  # bound on a graceful close (e.g. a TLS close_notify)
A_TO_B = "a_to_b"
B_TO_A = "b_to_a"
_NAMES = (A_TO_B, B_TO_A)  # direction index (relay.park) -> name
# A stream that is gone: the direction ends as a reset.
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
# Small messages in a row (each direction forwarding under splice.PROBE_SIZE
# while the other waits to read) after which a pump parks at once when the
# parker forwards inline: its traffic is interactive.
PARK_STREAK = 4


@dataclass(slots=True)
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
_NO_SCOPE = contextlib.nullcontext()  # stateless: one for every pump without an idle timeout


def _unthrottle(stream: trio.abc.Stream) -> None:
    outer: trio.abc.SendStream = stream
    if isinstance(stream, trio.StapledStream):
        outer = stream.send_stream
    sock_stream = find_layer(outer, trio.SocketStream)
    if sock_stream is not None:
        unthrottle_tcp(sock_stream.socket)


def _no_fd() -> int:
    return -1


def _fileno_getter(
    stream: trio.abc.Stream | trio.abc.SendStream | trio.abc.ReceiveStream, *, receive: bool
) -> Callable[[], int] | None:
    """A cheap callable returning the fd *stream* reads (receive) or writes
    through now (-1 once closed); None when it is not fd-backed."""
    layer = fd_layer(stream, receive=receive)
    if isinstance(layer, trio.SocketStream):
        return layer.socket.fileno
    if layer is not None:
        return layer.fileno
    return None


def _eof_errno(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, OSError) and cause.errno == errno.EIO


class _Session:
    __slots__ = (
        "a",
        "b",
        "busy",
        "counters",
        "done_ab",
        "done_ba",
        "failure",
        "idle_scope",
        "idle_timeout",
        "idle_timeout_s",
        "inline_moved_at",
        "live",
        "mode_ab",
        "mode_ba",
        "parked_on",
        "parking",
        "pool",
        "quick_park",
        "reading",
        "scope",
        "small_streak",
        "splice",
        "stall_timeout",
    )

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
        self.scope: trio.CancelScope | None = None
        # Directions: mode 0 not started yet, 1 fd fast path, 2 userspace copy.
        self.mode_ab = self.mode_ba = 0
        self.done_ab = self.done_ba = False  # reached EOF, every byte delivered
        self.live = 2  # directions not done
        # Idle parking (relay.park): see park_now().
        self.busy = False  # a byte moved since the parker's last sweep
        self.reading = 0  # fast-path directions blocked in their read wait
        self.parking = False
        self.parked_on: tuple[int, ...] | None = None
        self.quick_park = False  # park after PARK_STREAK small messages (inline parker)
        self.small_streak = 0  # small messages in a row (common.io.splice)
        self.inline_moved_at = 0.0  # time.monotonic() of the last inline forward

    def _moved(self, direction: str, n: int) -> None:
        """Counts delivered bytes (called once per burst or message, not per chunk)."""
        self.counters.add(direction, n)
        self.busy = True
        if self.idle_scope is not None:
            self.idle_scope.deadline = trio.current_time() + self.idle_timeout_s

    def _moved_ab(self, n: int) -> None:
        self._moved(A_TO_B, n)

    def _moved_ba(self, n: int) -> None:
        self._moved(B_TO_A, n)

    def moved_inline(self, direction: int, n: int) -> None:
        """Called by the parker's reactor thread (see relay.park)."""
        self.counters.add(_NAMES[direction], n)
        self.busy = True
        self.inline_moved_at = time.monotonic()

    def interactive(self) -> None:
        """A direction forwarded a small message and is about to wait to read."""
        self.small_streak += 1
        if (
            self.quick_park
            and self.small_streak >= PARK_STREAK
            and self.reading == self.live - 1
            and not self.parking
        ):
            self.park_now()

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        assert self.scope is not None
        self.scope.cancel()

    # --- idle parking (called by the Parker) ------------------------------------

    def park_now(self) -> None:
        """Every live direction waits to read on the fast path: stop them (at
        that wait, nothing in flight) so the pump parks its fds."""
        self.parking = True
        if self.scope is not None:
            self.scope.cancel()

    def read_fds(self) -> tuple[int, ...] | None:
        """The source fds of the live directions (None: one is not fd-backed)."""
        fds: list[int] = []
        for done, src in ((self.done_ab, self.a), (self.done_ba, self.b)):
            if not done:
                fd = read_fd(src)
                if fd is None:
                    return None
                fds.append(fd)
        return tuple(fds)

    def parked_fds_valid(self) -> bool:
        return self.read_fds() == self.parked_on

    def routes(self) -> tuple[Route, ...]:
        """The live directions, for inline forwarding (relay.park.Route); asked
        by the reactor thread while the pump is parked (its task is not running)."""
        out: list[Route] = []
        inline_ok = self.counters.on_bytes is None  # callbacks stay in the trio thread
        for d, (done, src, dst) in enumerate(
            ((self.done_ab, self.a, self.b), (self.done_ba, self.b, self.a))
        ):
            if done:
                continue
            rfd = read_fd(src)
            if rfd is None:
                continue
            wfd = write_fd(dst) if inline_ok else None
            rget = _fileno_getter(src, receive=True)
            wget = _fileno_getter(dst, receive=False)
            if wfd is None or rget is None or wget is None:
                out.append((rfd, NO_DST, d, _no_fd, _no_fd))
            else:
                out.append((rfd, wfd, d, rget, wget))
        return tuple(out)

    async def take_handoff(self, handoff: list[Handoff]) -> None:
        """After parking: deliver what the parker read and did not write, and
        act on an EOF or error it saw (in direction order, before the
        directions run again)."""
        for d, kind, data, error in handoff:
            if d < 0:
                continue
            name = _NAMES[d]
            dst = self.b if d == 0 else self.a
            if kind == "error":
                self._fail_now(_Abort(f"reset {name}: {error}"))
                return
            if kind == "data":
                wfd = write_fd(dst)
                if wfd is None:
                    self._fail_now(_Abort(f"reset {name}: destination closed"))
                    return
                try:
                    await write_all(wfd, data, self.stall_timeout)
                except (WriteStalled, *_BROKEN) as exc:
                    self._fail_now(self._failure(name, exc))
                    return
                self._moved(name, len(data))
            elif kind == "eof":
                await self._ended(d == 0, dst, name)

    def _failure(self, name: str, exc: BaseException) -> BaseException:
        """What a direction ends with when writing (or reading) failed with ``exc``."""
        if isinstance(exc, WriteStalled):
            return StallTimeout(f"{name}: write stalled for over {self.stall_timeout}s")
        return _Abort(f"reset {name}: {exc}")

    def _fail_now(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc

    def _set_mode(self, name: str, mode: int) -> None:
        if name == A_TO_B:
            self.mode_ab = mode
        else:
            self.mode_ba = mode
        self.counters.spliced = self.mode_ab == 1 or self.mode_ba == 1

    async def direction(self, src: trio.abc.Stream, dst: trio.abc.Stream, name: str) -> None:
        ab = name == A_TO_B
        try:
            mode = self.mode_ab if ab else self.mode_ba
            if mode == 0:
                _unthrottle(dst)
                mode = 1 if self.splice else 2
            rfd = wfd = None
            if mode == 1:
                rfd = read_fd(src)
                wfd = write_fd(dst)
                if rfd is None or wfd is None:
                    mode = 2
            self._set_mode(name, mode)
            if rfd is not None and wfd is not None:
                try:
                    eof = await splice_direction(
                        src,
                        dst,
                        rfd,
                        wfd,
                        self.pool,
                        on_moved=self._moved_ab if ab else self._moved_ba,
                        stall_timeout=self.stall_timeout,
                        mark=self,
                    )
                except SpliceUnsupported as exc:
                    log.debug("%s: splice unsupported, copying", name)
                    self._set_mode(name, 2)
                    if exc.leftover:
                        await self._send(dst, exc.leftover)
                        self._moved(name, len(exc.leftover))
                    await self._copy(src, dst, name)
                else:
                    if not eof:
                        return  # parking: not done
            else:
                await self._copy(src, dst, name)
        except (WriteStalled, *_BROKEN) as exc:
            self._fail(self._failure(name, exc))
            return
        await self._ended(ab, dst, name)

    async def _ended(self, ab: bool, dst: trio.abc.Stream, name: str) -> None:
        if ab:
            self.done_ab = True
        else:
            self.done_ba = True
        self.live -= 1
        # Clean EOF on src, every byte delivered: propagate the half-close.
        if isinstance(dst, trio.abc.HalfCloseableStream):
            try:
                await dst.send_eof()
            except _BROKEN as exc:
                log.debug("send_eof after %s failed: %s", name, exc)

    async def _send(self, dst: trio.abc.Stream, data: bytes | bytearray | memoryview) -> None:
        if self.stall_timeout is None:
            await dst.send_all(data)
            return
        with trio.move_on_after(self.stall_timeout) as scope:
            await dst.send_all(data)
        if scope.cancelled_caught:
            raise WriteStalled()

    async def _copy(self, src: trio.abc.Stream, dst: trio.abc.Stream, name: str) -> None:  # noqa: C901
        safe_view = isinstance(dst, _SAFE_SEND_TYPES)
        if isinstance(src, trio.SocketStream) and not safe_view:
            # The destination keeps what it is given (a peer link's replay
            # buffer): each read lands in a bytes object of its own, the one
            # copy out of the kernel, instead of a pooled buffer copied again.
            sock = src.socket
            while True:
                owned = await sock.recv(COPY_BUFFER_SIZE)
                if not owned:
                    return
                await self._send(dst, owned)
                self._moved(name, len(owned))
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
        except _BROKEN:
            pass


async def _park_with_idle_timeout(
    session: _Session, parker: Parker, fds: tuple[int, ...]
) -> list[Handoff] | None:
    """Park (inline parker) with an idle timeout. None: the fds cannot be
    watched, or (failure set) the idle timeout passed while parked.

    Inline forwarding moves bytes while the task sleeps, and the reactor thread
    cannot touch a trio deadline: the wait has its own deadline, re-armed from
    the time of the last inline forward when it passes."""
    scope = session.idle_scope
    assert scope is not None
    deadline = scope.deadline
    scope.deadline = math.inf
    session.inline_moved_at = 0.0
    idle = session.idle_timeout_s
    try:
        while True:
            with trio.CancelScope(deadline=deadline) as wait:
                handoff = await parker.park(session, fds)
            if not wait.cancelled_caught:
                return handoff
            if session.inline_moved_at:
                left = idle - (time.monotonic() - session.inline_moved_at)
                if left > 0:
                    deadline = trio.current_time() + left
                    continue
            session.failure = IdleTimeout(f"idle for {session.idle_timeout}s")
            return None
    finally:
        # Woken by a source (or cancelled): the idle clock restarts now.
        scope.deadline = trio.current_time() + idle


async def pump(  # noqa: C901
    a: trio.abc.Stream,
    b: trio.abc.Stream,
    *,
    counters: PumpCounters | None = None,
    idle_timeout: float | None = None,
    stall_timeout: float | None = None,
    pipes: PipePool | None = None,
    splice: bool = True,
    park: bool = True,
) -> None:
    """Move bytes both ways between *a* and *b* until both directions end.

    ``splice=False`` forces the copy path (for comparison and tests).
    ``park``: a pump on the fd fast path that stays idle for a sweep interval
    (relay.park.PARK_AFTER) parks: its one task waits for a source fd, with no
    second task and no nursery (the memory of an idle stream).
    Raises IdleTimeout / StallTimeout (PumpTimeout) on a timeout; returns
    normally on EOF both ways or on a reset peer. Closes both streams.
    """
    c = counters if counters is not None else PumpCounters()
    session = _Session(
        a, b, c, idle_timeout, stall_timeout, pipes if pipes is not None else default_pool(), splice
    )
    # Idle timeout: a deadline pushed forward whenever bytes move (no watchdog
    # task). One direction runs in this task, the other in one child task; an
    # idle pump parks (one task, no pipe or buffer).
    if idle_timeout is not None:
        session.idle_scope = trio.CancelScope(deadline=trio.current_time() + idle_timeout)
    parker = current_parker() if splice and park else None
    session.quick_park = parker is not None and parker.inline
    graceful = False
    try:
        with session.idle_scope or _NO_SCOPE:
            while True:
                session.parking = False
                session.busy = True  # a whole sweep interval before it may park
                if parker is not None:
                    parker.add(session)
                try:
                    async with trio.open_nursery() as nursery:
                        session.scope = nursery.cancel_scope
                        if not session.done_ba:
                            nursery.start_soon(session.direction, b, a, B_TO_A)
                        if not session.done_ab:
                            await session.direction(a, b, A_TO_B)
                finally:
                    nursery = None  # type: ignore[assignment]  # keep nothing of it alive while parked
                    session.scope = None
                    if parker is not None:
                        parker.remove(session)
                if not session.parking or session.failure is not None or not session.live:
                    break
                # Parked: no task but this one, no nursery, until a source fd
                # is readable (data, EOF or an error); then the directions again.
                assert parker is not None
                fds = session.read_fds()
                session.parked_on = fds
                session.small_streak = 0
                if fds is None:
                    handoff = None
                elif session.idle_scope is None or not parker.inline:
                    # (awaited here, not through a helper: an idle parked
                    # pump keeps no extra coroutine frame)
                    handoff = await parker.park(session, fds)
                else:
                    handoff = await _park_with_idle_timeout(session, parker, fds)
                if handoff is None:
                    if session.failure is not None:  # idle timeout while parked
                        break
                    parker = None  # cannot watch these fds: never park this pump
                    session.quick_park = False
                elif not session.parked_fds_valid():
                    session.failure = _Abort("reset: a stream was closed while parked")
                    break
                else:
                    await session.take_handoff(handoff)
                    if session.failure is not None or not session.live:
                        break
                session.parked_on = None
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
