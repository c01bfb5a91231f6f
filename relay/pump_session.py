"""One running pump (relay.pump): its two directions and what relay.park asks of it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from common.io.fastsock import unthrottle_tcp
from common.io.pipepool import PipePool
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
from relay.park import NO_DST, Handoff, Parker, Route
from relay.pump_blocking import BlockingSource
from relay.pump_bulk import BulkBursts, Hold
from relay.pump_copy import copy_loop
from relay.pump_state import (
    Abort,
    Direction,
    Mode,
    PumpCounters,
    StallTimeout,
)

log = logging.getLogger("relay.pump")

# A stream that is gone: the direction ends as a reset.
BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
# Small messages in a row (each direction forwarding under splice.PROBE_SIZE
# while the other waits to read) after which a pump parks at once when the
# parker forwards inline: its traffic is interactive.
PARK_STREAK = 4


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


def _route(d: Direction, inline_ok: bool) -> Route | None:
    """Direction ``d`` for inline forwarding (relay.park.Route); None: not fd-backed."""
    rfd = read_fd(d.src)
    if rfd is None:
        return None
    wfd = write_fd(d.dst) if inline_ok else None
    rget = _fileno_getter(d.src, receive=True)
    wget = _fileno_getter(d.dst, receive=False)
    if wfd is None or rget is None or wget is None:
        return (rfd, NO_DST, d.index, _no_fd, _no_fd)
    return (rfd, wfd, d.index, rget, wget)


class Session:
    __slots__ = (
        "bulk_hold",
        "busy",
        "counters",
        "dirs",
        "failure",
        "idle_scope",
        "idle_timeout",
        "idle_timeout_s",
        "inline_moved_at",
        "live",
        "parked_on",
        "parker",
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
        self.counters = counters
        self.idle_timeout = idle_timeout
        self.stall_timeout = stall_timeout
        self.pool = pool
        self.splice = splice
        self.failure: BaseException | None = None
        self.idle_timeout_s = idle_timeout if idle_timeout is not None else 0.0
        self.idle_scope: trio.CancelScope | None = None
        self.scope: trio.CancelScope | None = None
        self.dirs = (Direction(0, a, b, self._moved), Direction(1, b, a, self._moved))
        self.live = 2  # directions not done
        # Idle parking (relay.park): see park_now().
        self.parker: Parker | None = None
        self.busy = False  # a byte moved since the parker's last sweep
        self.reading = 0  # fast-path directions blocked in their read wait
        self.parking = False
        self.parked_on: tuple[int, ...] | None = None
        self.quick_park = False  # park after PARK_STREAK small messages (inline parker)
        self.small_streak = 0  # small messages in a row (common.io.splice)
        self.inline_moved_at = 0.0  # time.monotonic() of the last inline forward
        self.bulk_hold: Hold | None = None  # (relay.pump_bulk; set by relay.pump for a freeze)

    def _moved(self, direction: str, n: int) -> None:
        """Counts delivered bytes (called once per burst or message, not per chunk)."""
        self.counters.add(direction, n)
        self.busy = True
        if self.idle_scope is not None:
            self.idle_scope.deadline = trio.current_time() + self.idle_timeout_s

    def moved_inline(self, direction: int, n: int) -> None:
        """Called by the parker's reactor thread (see relay.park)."""
        self.counters.add(self.dirs[direction].name, n)
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
        for d in self.dirs:
            if not d.done:
                fd = read_fd(d.src)
                if fd is None:
                    return None
                fds.append(fd)
        return tuple(fds)

    def parked_fds_valid(self) -> bool:
        return self.read_fds() == self.parked_on

    def routes(self) -> tuple[Route, ...]:
        """The live directions, for inline forwarding (relay.park.Route); asked
        by the reactor thread while the pump is parked (its task is not running)."""
        inline_ok = self.counters.on_bytes is None  # callbacks stay in the trio thread
        out = (_route(d, inline_ok) for d in self.dirs if not d.done)
        return tuple(r for r in out if r is not None)

    async def take_handoff(self, handoff: list[Handoff]) -> None:
        """After parking: deliver what the parker read and did not write, and
        act on an EOF or error it saw (in direction order, before the
        directions run again)."""
        for i, kind, data, error in handoff:
            if i < 0:
                continue
            d = self.dirs[i]
            if kind == "error":
                self._fail_now(Abort(f"reset {d.name}: {error}"))
                return
            if kind == "data":
                if not await self._deliver(d, data):
                    return
            elif kind == "eof":
                await self._ended(d)

    async def _deliver(self, d: Direction, data: bytes) -> bool:
        """Write bytes the parker read for ``d``; False if that failed the pump."""
        wfd = write_fd(d.dst)
        if wfd is None:
            self._fail_now(Abort(f"reset {d.name}: destination closed"))
            return False
        try:
            await write_all(wfd, data, self.stall_timeout)
        except (WriteStalled, *BROKEN) as exc:
            self._fail_now(self._failure(d.name, exc))
            return False
        self._moved(d.name, len(data))
        return True

    async def unpark(self, handoff: list[Handoff] | None) -> bool:
        """Woken from parking with ``handoff`` (None: the fds could not be
        watched, or the idle timeout passed): True to run the directions again."""
        if handoff is None:
            if self.failure is not None:  # idle timeout while parked
                return False
            self.parker = None  # cannot watch these fds: never park this pump
            self.quick_park = False
        elif not self.parked_fds_valid():
            self.failure = Abort("reset: a stream was closed while parked")
            return False
        else:
            await self.take_handoff(handoff)
            if self.failure is not None or not self.live:
                return False
        self.parked_on = None
        return True

    def _failure(self, name: str, exc: BaseException) -> BaseException:
        """What a direction ends with when writing (or reading) failed with ``exc``."""
        if isinstance(exc, WriteStalled):
            return StallTimeout(f"{name}: write stalled for over {self.stall_timeout}s")
        return Abort(f"reset {name}: {exc}")

    def _fail_now(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc

    # --- the directions -----------------------------------------------------------

    async def run_directions(self) -> None:
        """Run the live directions (b to a in a child task) until both end, one
        fails, or the pump parks."""
        self.parking = False
        self.busy = True  # a whole sweep interval before it may park
        parker = self.parker
        if parker is not None:
            parker.add(self)
        try:
            async with trio.open_nursery() as nursery:
                self.scope = nursery.cancel_scope
                ab, ba = self.dirs
                # each direction's source, read blocking by its bulk thread while the
                # other waits (relay.pump_blocking; none kept while the pump is parked)
                sources = (BlockingSource(), BlockingSource())
                if not ba.done:
                    nursery.start_soon(self.direction, ba, sources)
                if not ab.done:
                    await self.direction(ab, sources)
        finally:
            self.scope = None
            if parker is not None:
                parker.remove(self)

    def _set_mode(self, d: Direction, mode: Mode) -> None:
        d.mode = mode
        self.counters.spliced = any(x.mode == Mode.FAST for x in self.dirs)

    def _fds(self, d: Direction) -> tuple[int, int] | None:
        """Pick ``d``'s path: its (source, destination) fds on the fast path,
        None when it copies."""
        mode = d.mode
        if mode == Mode.NOT_STARTED:
            _unthrottle(d.dst)
            mode = Mode.FAST if self.splice else Mode.COPY
        fds = None
        if mode == Mode.FAST:
            rfd = read_fd(d.src)
            wfd = write_fd(d.dst)
            if rfd is None or wfd is None:
                mode = Mode.COPY
            else:
                fds = (rfd, wfd)
        self._set_mode(d, mode)
        return fds

    async def direction(self, d: Direction, sources: tuple[BlockingSource, BlockingSource]) -> None:
        try:
            fds = self._fds(d)
            if fds is not None:
                try:
                    eof = await splice_direction(
                        d.src,
                        d.dst,
                        fds[0],
                        fds[1],
                        self.pool,
                        on_moved=d.moved,
                        stall_timeout=self.stall_timeout,
                        mark=self,
                        burst=BulkBursts(self.bulk_hold, sources[d.index]),
                        writer=sources[1 - d.index],  # its destination: the other's source
                    )
                except SpliceUnsupported as exc:
                    log.debug("%s: splice unsupported, copying", d.name)
                    self._set_mode(d, Mode.COPY)
                    if exc.leftover:
                        await self._send(d.dst, exc.leftover)
                        self._moved(d.name, len(exc.leftover))
                    await copy_loop(d.src, d.dst)(d.src, d.dst, d.name, self._send, self._moved)
                else:
                    if not eof:
                        return  # parking: not done
            else:
                await copy_loop(d.src, d.dst)(d.src, d.dst, d.name, self._send, self._moved)
        except (WriteStalled, *BROKEN) as exc:
            self._fail(self._failure(d.name, exc))
            return
        await self._ended(d)

    async def _ended(self, d: Direction) -> None:
        d.done = True
        self.live -= 1
        # Clean EOF on src, every byte delivered: propagate the half-close.
        dst = d.dst
        if isinstance(dst, trio.abc.HalfCloseableStream):
            try:
                await dst.send_eof()
            except BROKEN as exc:
                log.debug("send_eof after %s failed: %s", d.name, exc)

    async def _send(self, dst: trio.abc.Stream, data: bytes | bytearray | memoryview) -> None:
        if self.stall_timeout is None:
            await dst.send_all(data)
            return
        with trio.move_on_after(self.stall_timeout) as scope:
            await dst.send_all(data)
        if scope.cancelled_caught:
            raise WriteStalled()
