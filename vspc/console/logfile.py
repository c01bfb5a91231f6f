"""Console log files: byte-exact, size-rotated, written off the event loop.

``RotatingFile`` is plain blocking file code (used from a worker thread).
``LogWriter`` is the trio side: each port queues bytes in memory (bounded per
port and in total); one background task hands batches to a worker thread, so no
disk write ever runs on the event loop. When a queue is full the VM side waits
(backpressure) - bytes are never dropped for being slow.

Files: ``<dir>/<uuid>_<label>.log`` and ``<dir>/<uuid>_<label>.events.jsonl``.
At ``max_bytes`` the live file becomes ``.1`` (``.1`` becomes ``.2``...), and
only ``keep`` rotated files are kept. Log files are cut at exactly ``max_bytes``,
so ``cat x.log.N ... x.log.1 x.log`` gives back exactly the bytes the VM wrote
(as far as retention reaches). Event logs rotate between lines.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import trio

from vspc.console.chunks import coalesce
from vspc.console.logthread import LogThread
from vspc.core.identity import PortKey

log = logging.getLogger("vspc.console.log")

MAX_OPEN_FILES = 128
MAX_PENDING_EVENTS = 1024
# Batching: the writer waits up to FLUSH_INTERVAL for more data before a write,
# unless URGENT_BYTES are queued or a VM is waiting for room.
FLUSH_INTERVAL = 0.05
URGENT_BYTES = 1024 * 1024


def file_stem(key: PortKey) -> str:
    """``<uuid>_<label>`` with the label made safe for a file name."""
    return f"{key.uuid}_{quote(key.label, safe='')}"


def rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


class RotatingFile:
    """A size-rotated append-only file. Blocking; one thread at a time."""

    __slots__ = ("_name", "fd", "size")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._name = os.fspath(path)  # a str: opened once per write burst, keep it cheap
        self.fd: int | None = None
        self.size = 0

    @property
    def path(self) -> Path:
        return Path(self._name)

    def open(self) -> None:
        if self.fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            try:
                self.fd = os.open(self._name, flags, 0o640)
            except (FileNotFoundError, NotADirectoryError):  # no directory (yet, or any more)
                os.makedirs(os.path.dirname(self._name) or ".", exist_ok=True)
                self.fd = os.open(self._name, flags, 0o640)
            self.size = os.fstat(self.fd).st_size

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def rotate(self, keep: int) -> None:
        self.close()
        path = self.path
        # retention may have shrunk since the last rotation: remove the surplus
        n = keep + 1
        while True:
            p = rotated(path, n)
            if not p.exists():
                break
            p.unlink()
            n += 1
        if keep == 0:
            path.unlink(missing_ok=True)
        else:
            rotated(path, keep).unlink(missing_ok=True)
            for i in range(keep - 1, 0, -1):
                src = rotated(path, i)
                if src.exists():
                    os.replace(src, rotated(path, i + 1))
            if path.exists():
                os.replace(path, rotated(path, 1))
        self.open()

    def write(self, data: bytes, max_bytes: int, keep: int, *, whole_lines: bool = False) -> None:
        """Append ``data``, rotating at ``max_bytes``.

        Byte mode cuts files at exactly ``max_bytes``; ``whole_lines`` (for data
        that is a sequence of complete lines) rotates before a write that would
        overflow, so no line is split.
        """
        self.open()
        mv = memoryview(data)
        if whole_lines:
            if self.size > 0 and self.size + len(mv) > max_bytes:
                self.rotate(keep)
            self._write_all(mv)
            return
        while mv:
            if self.size >= max_bytes:
                self.rotate(keep)
            room = max_bytes - self.size
            self._write_all(mv[:room])
            mv = mv[room:]

    def _write_all(self, mv: memoryview) -> None:
        assert self.fd is not None
        while mv:
            n = os.write(self.fd, mv)
            self.size += n
            mv = mv[n:]


@dataclass(frozen=True)
class LogSettings:
    dir: Path | None
    max_bytes: int
    keep: int
    queue_bytes: int
    queue_total_bytes: int


class PortLog:
    """One port's queue towards its files (trio side) and its files (thread side)."""

    __slots__ = (
        "errors", "events", "events_dropped", "inflight", "last_error", "pending", "pending_bytes",
        "stem",
    )

    def __init__(self, stem: str) -> None:
        self.stem = stem
        self.pending: list[bytes] = []  # chunks as queued (no copy)
        self.pending_bytes = 0
        self.inflight = 0
        self.events: list[bytes] = []
        self.events_dropped = 0
        self.errors = 0
        self.last_error = ""

    @property
    def queued(self) -> int:
        return self.pending_bytes + self.inflight


@dataclass
class _Job:
    port: PortLog
    data: list[bytes]
    size: int
    events: list[bytes]
    error: str = ""


@dataclass
class _Files:
    """Thread-side state: an LRU of open files (a size is re-read from fstat on open)."""

    open_lru: OrderedDict[str, RotatingFile] = field(default_factory=OrderedDict)

    def get(self, path: str) -> RotatingFile:
        f = self.open_lru.get(path)
        if f is not None:
            self.open_lru.move_to_end(path)
            return f
        f = RotatingFile(path)
        f.open()
        self.open_lru[path] = f
        while len(self.open_lru) > MAX_OPEN_FILES:
            _, old = self.open_lru.popitem(last=False)
            old.close()
        return f

    def close_all(self) -> None:
        for f in self.open_lru.values():
            f.close()
        self.open_lru.clear()


class LogWriter:
    """Queues per port, one background task, batches written in a worker thread."""

    def __init__(self, settings: LogSettings) -> None:
        self.settings = settings
        self.total = 0  # bytes pending or in flight over all ports
        self._dirty: dict[PortLog, None] = {}
        self._wake = trio.Event()  # something to write
        self._urgent = trio.Event()  # ... and it should not wait for the batch window
        self._space = trio.lowlevel.ParkingLot()
        self._files = _Files()
        self._lock = trio.Lock()  # one batch at a time (and reconfigure waits for it)
        self._thread = LogThread()  # where every disk operation runs, in order

    @property
    def enabled(self) -> bool:
        return self.settings.dir is not None

    def room(self, port: PortLog) -> int:
        s = self.settings
        return min(s.queue_bytes - port.queued, s.queue_total_bytes - self.total)

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

    def _mark(self, port: PortLog) -> None:
        self._dirty[port] = None
        self._wake.set()

    async def reconfigure(self, settings: LogSettings) -> None:
        async with self._lock:
            old = self.settings
            self.settings = settings
            if old.dir != settings.dir:
                await self._thread.run_sync(self._files.close_all)
        self._space.unpark_all()

    async def run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                if not self._urgent.is_set():
                    with trio.move_on_after(FLUSH_INTERVAL):
                        await self._urgent.wait()
                self._wake = trio.Event()
                self._urgent = trio.Event()
                await self._flush_once()
        finally:
            try:
                with trio.move_on_after(10) as cs:
                    cs.shield = True
                    while self._dirty:
                        await self._flush_once()
                    await self._thread.run_sync(self._files.close_all)
            finally:
                self._thread.stop()

    async def log_size(self, port: PortLog) -> int | None:
        """The size of the port's current log file (in order after the writes
        queued before); None without a log directory."""
        if self.settings.dir is None:
            return None
        path = f"{os.fspath(self.settings.dir)}/{port.stem}.log"
        return await self._thread.run_sync(_size_of, path)

    def events_path(self, port: PortLog) -> Path | None:
        if self.settings.dir is None:
            return None
        return Path(self.settings.dir) / f"{port.stem}.events.jsonl"

    async def flush(self) -> None:
        """Write everything queued so far (tests and shutdown)."""
        while self._dirty:
            await self._flush_once()
        async with self._lock:
            pass

    async def _flush_once(self) -> None:
        async with self._lock:
            dirty, self._dirty = self._dirty, {}
            jobs = []
            for port in dirty:
                data, port.pending = port.pending, []
                size, port.pending_bytes = port.pending_bytes, 0
                port.inflight += size
                events, port.events = port.events, []
                if port.events_dropped:
                    events.append(
                        b'{"event":"events_dropped","count":%d}\n' % port.events_dropped
                    )
                    port.events_dropped = 0
                jobs.append(_Job(port, data, size, events))
            settings = self.settings
            try:
                await self._thread.run_sync(self._write_jobs, settings, jobs)
            finally:
                for job in jobs:
                    job.port.inflight -= job.size
                    self.total -= job.size
                    if job.error:
                        job.port.errors += 1
                        if job.error != job.port.last_error:
                            log.error("console log %s: %s", job.port.stem, job.error)
                        job.port.last_error = job.error
                    elif job.port.last_error:
                        log.info("console log %s: writing again", job.port.stem)
                        job.port.last_error = ""
                self._space.unpark_all()

    def _write_jobs(self, settings: LogSettings, jobs: list[_Job]) -> None:
        if settings.dir is None:
            return
        base = os.fspath(settings.dir)
        for job in jobs:
            try:
                if job.size:
                    f = self._files.get(f"{base}/{job.port.stem}.log")
                    for data in coalesce(job.data):
                        f.write(data, settings.max_bytes, settings.keep)
                if job.events:
                    f = self._files.get(f"{base}/{job.port.stem}.events.jsonl")
                    f.write(b"".join(job.events), settings.max_bytes, settings.keep, whole_lines=True)
            except OSError as e:
                # A broken disk must not stall every VM: report it loudly and carry on.
                job.error = f"{type(e).__name__}: {e}"


def _size_of(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
