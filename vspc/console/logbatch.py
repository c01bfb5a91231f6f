"""A port's log queue and the batches taken from it, as the log thread writes them.

``PortLog`` is one port's queue towards its files (held by the trio side,
``vspc.console.logwriter``); a ``LogJob`` is one batch of it, which
``write_job`` writes in the log thread, recording how far each part got.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vspc.console.chunks import coalesce
from vspc.console.gaps import Gap
from vspc.console.logfile import OpenFiles, replace_file, size_of


@dataclass(frozen=True)
class LogSettings:
    dir: Path | None
    max_bytes: int
    keep: int
    queue_bytes: int
    queue_total_bytes: int
    hold_bytes: int = 4 * 1024 * 1024
    #: the data is whole lines (container logs): rotate between lines, never in one
    whole_lines: bool = False


class PortLog:
    """One port's queue towards its files."""

    __slots__ = (
        "events",
        "events_dropped",
        "gaps",
        "inflight",
        "log_size",
        "meta",
        "pending",
        "pending_bytes",
        "stem",
        "torn",
        "written",
    )

    def __init__(self, stem: str) -> None:
        self.stem = stem
        self.pending: list[bytes] = []  # chunks as queued (no copy)
        self.pending_bytes = 0
        self.inflight = 0
        self.written = 0  # bytes of this run in its log files
        self.events: list[bytes] = []
        self.torn = b""  # the rest of event lines a failed write cut: written before anything
        self.events_dropped = 0
        self.gaps: list[Gap] = []  # holes not yet in the event log
        self.meta: bytes | None = None  # the meta file's new content, to write
        self.log_size = -1  # the live log file's size after the last write (-1: unknown)

    @property
    def queued(self) -> int:
        return self.pending_bytes + self.inflight

    @property
    def idle(self) -> bool:
        """Nothing queued, held or unrecorded."""
        return not (self.queued or self.events or self.torn or self.gaps or self.meta is not None)


@dataclass
class LogJob:
    port: PortLog
    data: list[bytes]
    size: int
    events: bytes  # a torn line's rest, the gap lines, then the other event lines
    torn: int  # how much of ``events`` is the torn rest
    gaps: list[Gap]
    gap_bytes: int  # how much of ``events`` the gap lines are
    meta: bytes | None
    # results (set in the thread)
    written: int = 0
    events_written: int = 0
    file_size: int = -1
    error: str = ""
    errno: int | None = None
    meta_done: bool = False


def write_job(files: OpenFiles, base: str, s: LogSettings, job: LogJob) -> None:
    """Write one port's batch; record how far each part got and the first error."""
    stem = f"{base}/{job.port.stem}"
    try:
        if job.size:
            f = None
            try:
                f = files.get(f"{stem}.log")
                start = f.written
                if s.whole_lines:
                    for data in coalesce(job.data):
                        f.write(data, s.max_bytes, s.keep, whole_lines=True)
                else:
                    f.write_parts(job.data, s.max_bytes, s.keep)
            finally:
                job.written = f.written - start if f is not None else 0
                job.file_size = f.size if f is not None else size_of(f"{stem}.log")
    except OSError as e:
        _failed(job, e)
    try:
        if job.events:
            ev = None
            try:
                ev = files.get(f"{stem}.events.jsonl")
                start = ev.written
                ev.write(job.events, s.max_bytes, s.keep, whole_lines=True)
            finally:
                job.events_written = ev.written - start if ev is not None else 0
        if job.meta is not None:
            replace_file(f"{stem}.meta.json", job.meta)
            job.meta_done = True
    except OSError as e:
        _failed(job, e)


def _failed(job: LogJob, e: OSError) -> None:
    if not job.error:
        job.error = f"{type(e).__name__}: {e}"
        job.errno = e.errno
