"""Reading a VM's container log files (blocking: run in a thread).

The files are ``<stem>.log`` (live), ``.1`` ... ``.N`` (older), written by the
console's ``LogWriter`` in whole lines of ``vspc.core.linelog`` records, in time
order. A read opens them all at once (``snapshot``, in the log thread while no
batch is in flight, so it sees a consistent set) and finds where it begins by
reading backwards in blocks for ``tail`` and ``since`` (``tail 10`` reads a
block of the live file, not the files); it then reads forwards a page at a
time from the open files, which a rotation or retention meanwhile does not
disturb. A line that does not parse (torn by a crash or a full disk) is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vspc.console.logfile import rotated
from vspc.core.linelog import LineLogError, LogLine, Stream, parse_record

BLOCK = 64 * 1024
PAGE = 256 * 1024


def log_files(log_dir: Path, stem: str) -> list[Path]:
    """The VM's files that exist, newest first."""
    live = log_dir / f"{stem}.log"
    out = [live] if live.exists() else []
    n = 1
    while (p := rotated(live, n)).exists():
        out.append(p)
        n += 1
    return out


def lines_backwards(path: Path, block: int = BLOCK) -> Iterator[bytes]:
    """``path``'s lines (without newlines) from the last to the first, read in blocks."""
    try:
        f = open(path, "rb")
    except OSError:
        return
    with f:
        for _, line in _back(f, f.seek(0, os.SEEK_END), block):
            yield line


def _back(f: BinaryIO, size: int, block: int = BLOCK) -> Iterator[tuple[int, bytes]]:
    """The lines of ``f``'s first ``size`` bytes, last first, with their offsets."""
    pos = size
    rest = b""  # the start of a line whose beginning is in an earlier block
    while pos > 0:
        n = min(block, pos)
        pos -= n
        f.seek(pos)
        buf = f.read(n) + rest
        end = len(buf)
        j = buf.rfind(b"\n", 0, end)
        while j >= 0:
            if j + 1 < end:
                yield pos + j + 1, buf[j + 1 : end]
            end = j
            j = buf.rfind(b"\n", 0, end)
        rest = buf[:end]
    if rest:
        yield 0, rest


def parsed(raws: Iterable[bytes], streams: frozenset[Stream]) -> Iterator[LogLine]:
    for raw in raws:
        try:
            line = parse_record(raw)
        except LineLogError:
            continue
        if line.stream in streams:
            yield line


def select_back(newest: Iterable[LogLine], tail: int | None, since_ns: int | None) -> list[LogLine]:
    """From lines newest first: the last ``tail`` at or after ``since_ns``, oldest first."""
    out: list[LogLine] = []
    if tail is not None and tail <= 0:
        return out
    for line in newest:
        if since_ns is not None and line.ns < since_ns:
            break  # in time order: all earlier lines are older
        out.append(line)
        if tail is not None and len(out) >= tail:
            break
    out.reverse()
    return out


@dataclass
class Span:
    """``[start, end)`` of one log file, opened when the read began: a rotation
    (a rename) or retention (an unlink) meanwhile does not change what it reads."""

    f: BinaryIO
    start: int
    end: int


class Snapshot:
    """What the files held when a read began, oldest first, read a page at a
    time (memory per reader: a page, not the files)."""

    __slots__ = ("spans",)

    def __init__(self, spans: list[Span]) -> None:
        self.spans = spans

    def page(self, streams: frozenset[Stream], size: int = PAGE) -> list[LogLine]:
        """The next lines (about ``size`` bytes of records); [] at the end. Blocking."""
        while self.spans:
            sp = self.spans[0]
            buf = b""
            if sp.start < sp.end:
                sp.f.seek(sp.start)
                buf = sp.f.read(min(size, sp.end - sp.start))
            if not buf:
                sp.f.close()
                del self.spans[0]
                continue
            cut = buf.rfind(b"\n") + 1
            if cut == 0 or sp.start + len(buf) == sp.end:
                cut = len(buf)  # a line longer than a page, or the end of the file
            sp.start += cut
            lines = list(parsed((r for r in buf[:cut].split(b"\n") if r), streams))
            if lines:
                return lines
        return []

    def close(self) -> None:
        for sp in self.spans:
            sp.f.close()
        self.spans = []


def snapshot(
    log_dir: Path,
    stem: str,
    *,
    tail: int | None = None,
    since_ns: int | None = None,
    streams: frozenset[Stream],
) -> Snapshot:
    """Open the VM's files and find where the read begins (backwards, in blocks,
    for ``tail`` and ``since``). Blocking; in the log thread, no batch in flight."""
    opened: list[tuple[BinaryIO, int]] = []  # newest first
    try:
        for path in log_files(log_dir, stem):
            try:
                f: BinaryIO = open(path, "rb")
            except OSError:
                continue
            opened.append((f, f.seek(0, os.SEEK_END)))
        first, offset = _start(opened, tail, since_ns, streams)
    except BaseException:
        for g, _ in opened:
            g.close()
        raise
    for g, _ in opened[first + 1 :]:
        g.close()
    spans = [Span(f, 0, size) for f, size in opened[: first + 1]]
    if spans:
        spans[-1].start = offset
    spans.reverse()
    return Snapshot(spans)


def _start(
    opened: list[tuple[BinaryIO, int]],
    tail: int | None,
    since_ns: int | None,
    streams: frozenset[Stream],
) -> tuple[int, int]:
    """Where the read begins: the file (its index, newest first; -1: nothing) and
    the offset in it. The files are in time order: the scan stops at the first
    line before ``since_ns`` or at the ``tail``-th line of ``streams``."""
    if tail is None and since_ns is None:
        return len(opened) - 1, 0
    start, count = (-1, 0), 0
    if tail is not None and tail <= 0:
        return start
    for i, (f, size) in enumerate(opened):
        for off, raw in _back(f, size):
            try:
                line = parse_record(raw)
            except LineLogError:
                continue
            if since_ns is not None and line.ns < since_ns:
                return start
            start = (i, off)
            count += line.stream in streams
            if tail is not None and count >= tail:
                return start
    return start


def read_lines(
    log_dir: Path,
    stem: str,
    *,
    tail: int | None = None,
    since_ns: int | None = None,
    streams: frozenset[Stream],
) -> Iterator[LogLine]:
    """The VM's lines in the files: the last ``tail`` (all: None) of those at or
    after ``since_ns`` (all: None), of the ``streams`` asked for, oldest first.
    Blocking, and racing the writer: the store reads through ``snapshot``."""
    snap = snapshot(log_dir, stem, tail=tail, since_ns=since_ns, streams=streams)
    try:
        while page := snap.page(streams):
            yield from page
    finally:
        snap.close()


def pending_lines(chunks: list[bytes], streams: frozenset[Stream]) -> list[LogLine]:
    """The lines in records queued but not written yet (whole records, in order)."""
    out: list[LogLine] = []
    for chunk in chunks:
        out.extend(parsed((r for r in chunk.split(b"\n") if r), streams))
    return out
