"""The trio side of the console logs: per-port queues written in batches by one thread.

Each port queues bytes in memory (bounded per port and in total); one background
task hands batches to the log thread, so no disk operation runs on the event
loop. When a queue is full the VM side waits (backpressure): bytes are never
dropped for being slow.

When a write fails (see ``vspc.console.gaps``): a full disk holds the unwritten
bytes and retries every RETRY_INTERVAL, holding at most ``hold_bytes`` in all
(VMs wait beyond that, so nothing is lost); any other error drops the bytes and
records the hole as a ``gap`` event (written when the event log can be
written again) and in the metrics. One WARNING when such an episode starts, one
INFO with its totals when it ends.

Files: ``<dir>/<stem>.log``, ``<stem>.events.jsonl``, ``<stem>.meta.json`` and
the run marker (``vspc.console.history``). The queues and batches themselves
are in ``vspc.console.logbatch``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import trio

from vspc.console import history
from vspc.console.eventlog import format_event
from vspc.console.gaps import Episode, Gap, is_disk_full, skip
from vspc.console.logbatch import LogJob, LogSettings, PortLog, write_job
from vspc.console.logfile import OpenFiles, size_of
from vspc.console.logthread import LogThread
from vspc.metrics import VspcMetrics

log = logging.getLogger("vspc.console.log")
T = TypeVar("T")

MAX_PENDING_EVENTS = 1024
# Batching: the writer waits up to FLUSH_INTERVAL for more data before a write,
# unless URGENT_BYTES are queued (over all ports; or half a port's queue), or a VM
# is waiting for room. Each batch is a round trip to the log thread (a wake-up and
# GIL hand-offs both ways): in bulk, fewer larger batches cost less CPU.
FLUSH_INTERVAL = 0.05
URGENT_BYTES = 2 * 1024 * 1024
#: While writes fail: how often they are retried, and for how long at exit.
RETRY_INTERVAL = 0.2
EXIT_RETRY = 3.0


class LogWriter:
    """Queues per port, one background task, batches written in the log thread."""

    def __init__(
        self, settings: LogSettings, metrics: VspcMetrics | None = None, *, what: str = "console"
    ) -> None:
        self.settings = settings
        self.what = what  # whose logs, in log lines ("console", "container")
        self.metrics = metrics if metrics is not None else VspcMetrics.create()
        self.total = 0  # bytes pending or in flight over all ports
        self._dirty: dict[PortLog, None] = {}
        self._wake = trio.Event()  # something to write
        self._urgent = trio.Event()  # ... and it should not wait for the batch window
        self._space = trio.lowlevel.ParkingLot()
        self._files = OpenFiles()
        self._lock = trio.Lock()  # one batch at a time (and reconfigure waits for it)
        self._thread = LogThread()  # where every disk operation runs, in order
        self._episode: Episode | None = None
        self._disk_full = False  # the last failed round failed for lack of space

    @property
    def enabled(self) -> bool:
        return self.settings.dir is not None

    @property
    def failing(self) -> bool:
        return self._episode is not None

    @property
    def holding(self) -> bool:
        """The disk is full: bytes are held (``hold_bytes`` at most) and VMs wait."""
        return self._disk_full

    def room(self, port: PortLog) -> int:
        s = self.settings
        r = min(s.queue_bytes - port.queued, s.queue_total_bytes - self.total)
        if self._disk_full:
            r = min(r, s.hold_bytes - self.total)
        return r

    async def wait_room(self) -> None:
        self._urgent.set()
        await self._space.park()

    def write(self, port: PortLog, data: bytes | bytearray | memoryview) -> None:
        """Queue VM bytes (the caller checked ``room``)."""
        port.pending.append(data if type(data) is bytes else bytes(data))
        port.pending_bytes += len(data)
        self.total += len(data)
        self._mark(port)
        if self.total >= URGENT_BYTES or 2 * port.pending_bytes >= self.settings.queue_bytes:
            self._urgent.set()

    def event(self, port: PortLog, line: bytes) -> None:
        if len(port.events) >= MAX_PENDING_EVENTS:
            port.events_dropped += 1
            return
        port.events.append(line)
        self._mark(port)

    def meta(self, port: PortLog, content: bytes) -> None:
        """(Re)write the port's meta file (who its files belong to)."""
        port.meta = content
        self._mark(port)

    def _mark(self, port: PortLog) -> None:
        self._dirty[port] = None
        self._wake.set()

    async def reconfigure(self, settings: LogSettings) -> None:
        async with self._lock:
            old = self.settings
            self.settings = settings
            if old.dir != settings.dir:
                await self._thread.run_sync(self._files.close_all)
                await self._end_run(old.dir)
                await self._begin_run(settings.dir)
        self._space.unpark_all()

    async def run(self) -> None:
        async with self._lock:  # the last run's state is read before anything is written
            await self._begin_run(self.settings.dir)
        try:
            while True:
                if self._episode is not None:
                    await trio.sleep(RETRY_INTERVAL)  # on a timer, not on every new byte
                else:
                    await self._wake.wait()
                    if not self._urgent.is_set():
                        with trio.move_on_after(FLUSH_INTERVAL):
                            await self._urgent.wait()
                self._wake = trio.Event()
                self._urgent = trio.Event()
                await self._flush_once()
        finally:
            with trio.CancelScope(shield=True):
                await self._exit()

    async def _exit(self) -> None:
        try:
            with trio.move_on_after(EXIT_RETRY):
                while self._dirty:
                    await self._flush_once()
                    if self._dirty:
                        await trio.sleep(RETRY_INTERVAL)
            self._give_up("exit while the log could not be written")
            await self._thread.run_sync(self._files.close_all)
            await self._end_run(self.settings.dir)
        finally:
            self._thread.stop()

    def _give_up(self, reason: str) -> None:
        """Count what is still queued as lost (the marker stays: the next start marks it)."""
        lost = 0
        for port in list(self._dirty):
            if port.pending_bytes:
                lost += port.pending_bytes
                self.total -= port.pending_bytes
                self._drop(port, port.pending_bytes, reason)
                port.pending, port.pending_bytes = [], 0
        if self._dirty:
            log.warning(
                "%s logs: %d bytes (and events) of %d ports not written at exit",
                self.what,
                lost,
                len(self._dirty),
            )

    async def _begin_run(self, log_dir: Path | None) -> None:
        if log_dir is None:
            return
        try:
            marked = await self._thread.run_sync(history.begin, log_dir, time.time())
        except OSError as e:
            log.warning("%s logs: cannot mark the run in %s: %s", self.what, log_dir, e)
            return
        if marked:
            self.metrics.console_log_gaps_total.inc(len(marked))
            log.warning(
                "%s logs: the last run was killed; marked a restart gap in %d event logs",
                self.what,
                len(marked),
            )

    async def _end_run(self, log_dir: Path | None) -> None:
        if log_dir is None or self._dirty:  # something not written: the next start marks it
            return
        try:
            await self._thread.run_sync(history.end, log_dir)
        except OSError as e:
            log.warning("%s logs: cannot clear the run marker in %s: %s", self.what, log_dir, e)

    async def read_history(self, port: PortLog, n: int) -> bytes:
        """The last ``n`` bytes the log files held before this run wrote to them.

        No batch is in flight meanwhile, so the files end with exactly the bytes
        this run wrote (``port.written``), which are cut off.
        """
        log_dir = self.settings.dir
        if log_dir is None or n <= 0:
            return b""
        async with self._lock:
            mine = port.written
            try:
                tail = await self._thread.run_sync(history.read_tail, log_dir, port.stem, n + mine)
            except OSError as e:
                log.warning("%s log %s: cannot read its history: %s", self.what, port.stem, e)
                return b""
        return tail[: max(0, len(tail) - mine)]

    @asynccontextmanager
    async def settled(self) -> AsyncIterator[None]:
        """Hold off the batches: inside, the files hold everything written and
        ``port.pending`` everything else (a reader of both sees each byte once)."""
        async with self._lock:
            yield

    async def in_thread(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` in the log thread, after the writes handed to it before."""
        return await self._thread.run_sync(fn, *args)

    def lost(self, port: PortLog, n: int, reason: str) -> None:
        """``n`` bytes of ``port`` will never be written (the caller had no room
        for them): recorded as a gap, like bytes a failed write dropped."""
        if n > 0:
            self._drop(port, n, reason)

    async def log_size(self, port: PortLog) -> int | None:
        """The size of the port's live log file, in order after the writes queued
        before; None without a log directory."""
        if self.settings.dir is None:
            return None
        path = f"{os.fspath(self.settings.dir)}/{port.stem}.log"
        return await self._thread.run_sync(size_of, path)

    def events_path(self, port: PortLog) -> Path | None:
        if self.settings.dir is None:
            return None
        return Path(self.settings.dir) / f"{port.stem}.events.jsonl"

    async def flush(self) -> None:
        """Write everything queued so far (tests and shutdown); one try while writes fail."""
        while self._dirty:
            await self._flush_once()
            if self._episode is not None:
                break
        async with self._lock:
            pass

    async def _flush_once(self) -> None:
        async with self._lock:
            dirty, self._dirty = self._dirty, {}
            jobs = [self._job(port) for port in dirty]
            settings = self.settings
            try:
                await self._thread.run_sync(self._write_jobs, settings, jobs)
            finally:
                failed = [job for job in jobs if self._settle(job)]
                self._round_done(failed)
                self._space.unpark_all()

    def _job(self, port: PortLog) -> LogJob:
        data, port.pending = port.pending, []
        size, port.pending_bytes = port.pending_bytes, 0
        port.inflight += size
        gaps, port.gaps = port.gaps, []
        torn, port.torn = port.torn, b""
        lines = [torn] + [format_event("gap", g.fields(), time.time()) for g in gaps]
        gap_bytes = sum(map(len, lines)) - len(torn)
        lines += port.events
        port.events = []
        if port.events_dropped:
            lines.append(b'{"event":"events_dropped","count":%d}\n' % port.events_dropped)
            port.events_dropped = 0
        meta, port.meta = port.meta, None
        return LogJob(port, data, size, b"".join(lines), len(torn), gaps, gap_bytes, meta)

    def _settle(self, job: LogJob) -> bool:
        """Account for a written job; put back or drop what failed. Whether it failed."""
        port = job.port
        port.inflight -= job.size
        port.written += job.written
        self.total -= job.size
        if job.file_size >= 0:
            port.log_size = job.file_size
        if job.events_written < len(job.events):
            self._events_back(job)
        if job.meta is not None and not job.meta_done and port.meta is None:
            port.meta = job.meta
            self._dirty[port] = None
        if not job.error:
            return False
        self.metrics.console_log_write_errors_total.inc()
        self._begin_episode(job.error)
        rest = job.size - job.written
        if rest and is_disk_full(job.errno):
            port.pending[:0] = skip(job.data, job.written)
            port.pending_bytes += rest
            self.total += rest
            self._dirty[port] = None
        elif rest:
            self._drop(port, rest, job.error)
        log.debug("%s log %s: %s", self.what, port.stem, job.error)
        return True

    def _events_back(self, job: LogJob) -> None:
        """Put back the event lines a failed write did not finish: a line it cut is
        finished first; gap lines not started are formatted again (they may grow)."""
        port, blob, done = job.port, job.events, job.events_written
        if done <= job.torn:
            port.torn = blob[done : job.torn]
            port.gaps[:0] = job.gaps
            rest = blob[job.torn + job.gap_bytes :]
            if rest:
                port.events.insert(0, rest)
        else:
            port.torn = blob[done:]
        self._dirty[port] = None

    def _drop(self, port: PortLog, n: int, reason: str) -> None:
        offset = max(port.log_size, 0)
        last = port.gaps[-1] if port.gaps else None
        new = last is None or last.offset != offset or last.reason != reason
        if last is not None and not new:
            last.length += n
        else:
            port.gaps.append(Gap(offset, n, reason))
        self._dirty[port] = None
        self.metrics.console_log_gap_bytes_total.inc(n)
        if new:
            self.metrics.console_log_gaps_total.inc()
        if self._episode is not None:
            self._episode.dropped(n, new)

    def _begin_episode(self, error: str) -> None:
        if self._episode is None:
            self._episode = Episode(trio.current_time(), error, what=self.what)
            log.warning("%s", self._episode.start_line(self.settings.hold_bytes))

    def _round_done(self, failed: list[LogJob]) -> None:
        ep = self._episode
        if failed:
            assert ep is not None
            ep.failed(self.total)
            self._disk_full = any(is_disk_full(job.errno) for job in failed)
            return
        self._disk_full = False
        if ep is not None:
            self._episode = None
            log.info("%s", ep.end_line(trio.current_time()))

    def _write_jobs(self, settings: LogSettings, jobs: list[LogJob]) -> None:
        if settings.dir is None:
            for job in jobs:
                job.written, job.events_written, job.meta_done = job.size, len(job.events), True
            return
        base = os.fspath(settings.dir)
        for job in jobs:
            write_job(self._files, base, settings, job)
