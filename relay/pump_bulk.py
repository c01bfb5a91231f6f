"""Bulk splice bursts in a worker thread (the pump's fast path once a direction turns bulk).

A direction moving bulk on the fd fast path (common.io.splice) spends its time
in splice(2) calls; under trio every time the source runs dry or the
destination fills, the burst goes back through the event loop (an epoll
registration, a scheduler round, a task switch) and a new burst starts. In a
worker thread the syscalls release the GIL and the trio thread stays free: the
loop is what bench/_splice_floor.py does. Its reads block in the kernel, as the
floor's do, while the pump's other direction waits to read (a socket source:
relay.pump_blocking); otherwise it waits in ``poll(2)`` on just its own fds.

Only a direction that has moved ``THREAD_AFTER`` bytes in bulk under trio
uses a thread (``BulkBursts``): short transfers and interactive traffic never
do, and keep the trio burst's contract (counters current and the pipe back in
the pool as soon as the source is drained). A thread's burst keeps its pipe,
and its bytes may be unreported, until it returns: up to ``IDLE_RETURN``
after its source ran dry.

The trio side (``threaded_burst``) keeps control:

* Cancellation: the task waits in ``wait_task_rescheduled``; its abort writes an
  eventfd the thread polls too, and the task resumes once the thread returned
  (so the fds are never closed under a running thread by the pump itself).
  Bytes left in the pipe are thrown away with the pipe, as a cancelled burst
  under trio does.
* A burst returns with its pipe empty once the source stayed empty for
  ``IDLE_RETURN`` (or at EOF): the direction then waits to read under trio,
  where relay.park may park it and relay.pump_freeze may stop it (both act only
  on directions in their read wait, with nothing in flight). While a freeze
  is asked (``hold``) a burst returns as soon as its source is empty, and the
  direction's next bursts run under trio, so a busy bulk stream still reaches
  that safe point.
* Bytes moved are reported to the trio thread (``run_sync_soon``) at most every
  ``REPORT_AFTER`` seconds, and the rest when the burst returns: the counters,
  the idle timeout and the parker's sweep see traffic as for a trio burst.
* Stall timeout: a write that cannot proceed for ``stall_timeout`` raises
  WriteStalled. A stream closed by another task under a running burst is seen
  within ``CHECK_EVERY`` (trio.ClosedResourceError).
* At most ``MAX_THREADS`` bursts run in threads at once (the rest run under
  trio), and none under a trio.testing.MockClock (a thread's wake-ups are
  invisible to its autojump). Threads come from trio's cache
  (``start_thread_soon``); the pipe pool is used from the trio thread only.
"""

from __future__ import annotations

import errno
import os
import select
import time
from collections.abc import Callable

import outcome
import trio
import trio.testing

from common.io.pipepool import Pipe, PipePool
from common.io.splice import (
    PROBE_SIZE,
    SPLICE_FLAGS,
    SpliceUnsupported,
    WriteStalled,
    fd_layer,
    splice_burst,
)
from relay.pump_blocking import BlockingSource

IDLE_RETURN = 0.05  # source empty this long (pipe empty): back to trio's read wait
THREAD_AFTER = 4 << 20  # bytes a direction moves in bulk under trio before it uses a thread
CHECK_EVERY = 0.05  # a wait re-checks that the streams still own their fds
# Reports wake the trio thread, which then contends for the GIL with the
# burst: a few per second (one per sweep interval of relay.park).
REPORT_AFTER = 0.25
MAX_THREADS = 8
# VIC_PUMP_BULK_THREAD=0: every burst under trio (for A/B benches)
ENABLED = os.environ.get("VIC_PUMP_BULK_THREAD", "1") != "0"

_POLLIN = select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLRDHUP
_POLLOUT = select.POLLOUT | select.POLLERR | select.POLLHUP
_running = 0  # bursts in threads now (changed in the trio thread only)

Report = Callable[[int], None]
# True while the pump wants its directions back in their trio read wait (a
# freeze was asked): no new thread, and a thread returns once its source is empty.
Hold = Callable[[], bool]


class _Stopped(Exception):
    """The burst was asked to stop (its task was cancelled)."""


def _fileno_getter(stream: trio.abc.Stream, *, receive: bool) -> Callable[[], int]:
    """A callable returning the fd ``stream`` reads (``receive``) or writes through
    now: -1 once it was closed."""
    layer = fd_layer(stream, receive=receive)
    if isinstance(layer, trio.SocketStream):
        return layer.socket.fileno
    if layer is not None:
        return layer.fileno
    return lambda: -1


class _Burst:
    """The thread's side of one burst: the loop and its waits."""

    def __init__(
        self,
        src: trio.abc.Stream,
        dst: trio.abc.Stream,
        fds: tuple[int, int],
        pipe: Pipe,
        stop_fd: int,
        report: Report,
        stall_timeout: float | None,
        hold: Hold | None = None,
        source: BlockingSource | None = None,
    ) -> None:
        self.hold = hold
        self.source = source  # reads in blocking mode when it allows (relay.pump_blocking)
        self.stopping = False  # set with stop_fd (seen while bytes flow too)
        # (the fds the streams own now, cheaply: read_fd() walks the layers, ~9 us)
        self.src_fileno = _fileno_getter(src, receive=True)
        self.dst_fileno = _fileno_getter(dst, receive=False)
        # The thread splices through its own duplicates: a stream closed by
        # another task frees its fd number for reuse at once, and the thread
        # must never touch whatever socket gets that number next (it stops
        # within CHECK_EVERY, when ``_owned`` sees the close).
        self.want = fds
        self.src_fd, self.dst_fd = os.dup(fds[0]), os.dup(fds[1])
        self.pipe = pipe
        self.stop_fd = stop_fd
        self.report = report
        self.stall_timeout = stall_timeout
        self.in_pipe = 0
        self.moved = 0
        self.unreported = 0
        self.reported_at = time.monotonic()
        self.poll_in = select.poll()
        self.ready = [(self.src_fd, select.POLLIN)]  # its answer when the source has bytes
        self.poll_in.register(self.src_fd, _POLLIN)
        self.poll_in.register(stop_fd, select.POLLIN)
        self.poll_out = select.poll()
        self.poll_out.register(self.dst_fd, _POLLOUT)
        self.poll_out.register(stop_fd, select.POLLIN)

    def close(self) -> None:
        """Close the thread's duplicates (once the thread returned)."""
        os.close(self.src_fd)
        os.close(self.dst_fd)

    def _owned(self) -> None:
        """The streams still own these fds (else one was closed by another task)."""
        if (self.src_fileno(), self.dst_fileno()) != self.want:
            raise trio.ClosedResourceError("stream closed during the pump")

    def _wait(self, poller: select.poll, fd: int, timeout: float, hold: Hold | None = None) -> bool:
        """Wait until ``fd`` is ready (True) or ``timeout`` passed, or ``hold()``
        turned true (False)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            events = poller.poll(min(left, CHECK_EVERY) * 1000.0)
            for ready, _ in events:
                if ready == self.stop_fd:
                    raise _Stopped()
            self._owned()
            if events:
                return True
            if hold is not None and hold():
                return False

    def _flush_report(self, now: float) -> None:
        if self.unreported:
            self.report(self.unreported)
            self.unreported = 0
        self.reported_at = now

    def _read_failed(self, exc: OSError) -> int:
        """A read error: 0 when it means EOF, else raise."""
        if exc.errno == errno.EIO:  # pty master after the slave closed
            return 0
        if exc.errno == errno.EINVAL and not self.moved:
            raise SpliceUnsupported(b"") from exc
        raise trio.BrokenResourceError(f"read failed: {exc}") from exc

    def _partial(self, got: int, left: int) -> None:
        """Writing the pipe out stopped with ``left`` of ``got`` bytes in it."""
        self.in_pipe = left
        self.moved += got - left
        self.unreported += got - left

    def _wait_out(self, got: int, left: int, exc: OSError | None) -> None:
        """The destination would block (``exc`` None) or failed: wait or raise."""
        try:
            if exc is not None:
                raise trio.BrokenResourceError(f"write failed: {exc}") from exc
            if not self._wait(self.poll_out, self.dst_fd, self._stall()):
                raise WriteStalled()
        except BaseException:
            self._partial(got, left)
            raise

    def _stall(self) -> float:
        return self.stall_timeout if self.stall_timeout is not None else float("inf")

    def _source_empty(self, now: float, waited: float) -> bool:
        """Wait for the source; False once it stayed empty for IDLE_RETURN (of
        which ``waited`` already went by)."""
        if self.unreported and now - self.reported_at >= REPORT_AFTER:
            self._flush_report(now)
        if self.hold is not None and self.hold():
            return False
        return self._wait(self.poll_in, self.src_fd, IDLE_RETURN - waited, self.hold)

    def _dry(self, check: float) -> bool:
        """The source had nothing: True once it has, False once it stayed empty for
        IDLE_RETURN (or a freeze asks for the direction back)."""
        source, hold = self.source, self.hold
        events: list[tuple[int, int]] | None = None
        if source is not None and source.blocked:
            events = []  # a blocking read waited ``check`` in the kernel
        elif hold is None or not hold():
            events = self.poll_in.poll(check * 1000.0)
            if events == self.ready:  # the way back to the read: one poll, one comparison
                return True
        return self._source_empty(time.monotonic(), check if events == [] else 0.0)

    def _check(self) -> None:
        """Every CHECK_EVERY while bytes flow: the streams still own their fds and
        the task was not cancelled."""
        self._owned()
        if self.stopping:
            raise _Stopped()

    def run(self) -> bool:
        """Splice until EOF (True) or the source stays empty for IDLE_RETURN (False).

        The loop of bench/_splice_floor.py: read what the source has into the
        pipe, write all of it out, again (hot: locals only, no calls but the
        syscalls and the clock). Like the floor's, its reads block in the kernel
        while the pump's other direction waits to read (``source``,
        relay.pump_blocking); otherwise it polls its source, and the way from
        that poll back to the read is the shortest one (``_dry``)."""
        splice, flags, clock = os.splice, SPLICE_FLAGS, time.monotonic
        src, dst, r, w, size = self.src_fd, self.dst_fd, self.pipe.r, self.pipe.w, self.pipe.size
        source = self.source
        # with a source that may block, reads leave blocking to the socket's flag
        rflags = flags if source is None else os.SPLICE_F_MOVE
        check = min(IDLE_RETURN, CHECK_EVERY)
        checked = clock()
        while True:
            if source is not None and source.writer_waits and not source.blocked:
                source.try_block()
            try:
                got = splice(src, w, size, None, None, rflags)
            except BlockingIOError:
                if not self._dry(check):
                    return False
                continue
            except OSError as exc:
                got = self._read_failed(exc)
            if not got:
                return True
            self.in_pipe = left = got
            while left:
                try:
                    left -= splice(r, dst, left, None, None, flags)
                except BlockingIOError:
                    self._wait_out(got, left, None)
                except OSError as exc:
                    self._wait_out(got, left, exc)
            self.in_pipe = 0
            self.moved += got
            self.unreported += got
            now = clock()
            if now - checked >= CHECK_EVERY:
                self._check()
                checked = now
            if now - self.reported_at >= REPORT_AFTER:
                self._flush_report(now)


def usable() -> bool:
    """A burst may run in a thread now."""
    if not ENABLED or _running >= MAX_THREADS:
        return False
    return not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)


class BulkBursts:
    """The bursts of one direction (a common.io.splice.Burst): under trio until
    the direction moved ``THREAD_AFTER`` bytes in bulk, then in a thread when
    one may be used (``usable``) and ``hold`` does not say otherwise."""

    __slots__ = ("hold", "source", "trio_moved")

    def __init__(self, hold: Hold | None = None, source: BlockingSource | None = None) -> None:
        self.hold = hold
        self.source = source  # (relay.pump_blocking: the source's socket, shared with
        # the pump's other direction, which says when it waits)
        self.trio_moved = 0

    async def __call__(
        self,
        src: trio.abc.Stream,
        dst: trio.abc.Stream,
        src_fd: int,
        dst_fd: int,
        pool: PipePool,
        on_moved: Callable[[int], None],
        stall_timeout: float | None,
    ) -> tuple[bool, int]:
        hold = self.hold
        limit = 1 << 62
        if usable() and not (hold is not None and hold()):
            if self.trio_moved >= THREAD_AFTER:
                fds = (src_fd, dst_fd)
                source = self.source
                if not isinstance(fd_layer(src, receive=True), trio.SocketStream):
                    source = None
                return await threaded_burst(
                    src, dst, fds, pool, on_moved, stall_timeout, hold, source
                )
            # (a trio burst lasts as long as its source has bytes: hand over at THREAD_AFTER)
            limit = max(THREAD_AFTER - self.trio_moved, PROBE_SIZE)
        eof, moved = await splice_burst(
            src, dst, src_fd, dst_fd, pool, on_moved, stall_timeout, limit
        )
        self.trio_moved += moved
        return eof, moved


async def threaded_burst(
    src: trio.abc.Stream,
    dst: trio.abc.Stream,
    fds: tuple[int, int],
    pool: PipePool,
    on_moved: Callable[[int], None],
    stall_timeout: float | None,
    hold: Hold | None = None,
    source: BlockingSource | None = None,
) -> tuple[bool, int]:
    """common.io.splice's burst, run in a worker thread: (EOF seen, bytes moved).
    ``source``: its reads may block (relay.pump_blocking; a socket source only)."""
    global _running
    token = trio.lowlevel.current_trio_token()
    task = trio.lowlevel.current_task()
    stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    pipe = pool.acquire()
    report: Report = lambda n: token.run_sync_soon(on_moved, n)  # noqa: E731
    burst = _Burst(src, dst, fds, pipe, stop_fd, report, stall_timeout, hold, source)

    def deliver(result: outcome.Outcome[bool]) -> None:
        # (the task gets the thread's outcome as its value, to unwrap below)
        token.run_sync_soon(trio.lowlevel.reschedule, task, outcome.Value(result))

    def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        burst.stopping = True
        os.eventfd_write(stop_fd, 1)  # the thread stops; the task resumes when it did
        return trio.lowlevel.Abort.FAILED

    _running += 1
    try:
        if source is not None:  # (a non-blocking pipe makes every splice into it non-blocking)
            os.set_blocking(pipe.w, True)
            source.attach(burst.src_fd, CHECK_EVERY)
        trio.lowlevel.start_thread_soon(burst.run, deliver)
        result: outcome.Outcome[bool] = await trio.lowlevel.wait_task_rescheduled(abort)
    finally:
        _running -= 1
        if source is not None:
            source.detach()
            os.set_blocking(pipe.w, False)
        os.close(stop_fd)
        burst.close()
        if burst.unreported:
            on_moved(burst.unreported)
        if burst.in_pipe:
            pool.discard(pipe)
        else:
            pool.release(pipe, empty=True)
    if isinstance(result, outcome.Error) and isinstance(result.error, _Stopped):
        await trio.lowlevel.checkpoint()  # raises the Cancelled that stopped it
    return result.unwrap(), burst.moved
