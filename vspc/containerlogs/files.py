"""Reading a VM's container log files (blocking: run in the log thread).

The files are ``<stem>.log`` (live), ``.1`` ... ``.N`` (older), written by the
console's ``LogWriter`` in whole lines of ``vspc.core.linelog`` records, in time
order. ``read_lines`` reads them backwards in blocks for ``tail`` and ``since``
(``tail 10`` reads a block or two of the live file, not the files), forwards
for everything. A line that does not parse (torn by a crash or a full disk) is
skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from vspc.console.logfile import rotated
from vspc.core.linelog import LineLogError, LogLine, Stream, parse_record

BLOCK = 64 * 1024


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
        pos = f.seek(0, os.SEEK_END)
        rest = b""  # the start of a line whose beginning is in an earlier block
        while pos > 0:
            n = min(block, pos)
            pos -= n
            f.seek(pos)
            buf = f.read(n) + rest
            parts = buf.split(b"\n")
            rest = parts[0]
            for line in reversed(parts[1:]):
                if line:
                    yield line
        if rest:
            yield rest


def lines_forwards(path: Path) -> Iterator[bytes]:
    try:
        f = open(path, "rb")
    except OSError:
        return
    with f:
        yield from f


def parsed(raws: Iterable[bytes], streams: frozenset[Stream]) -> Iterator[LogLine]:
    for raw in raws:
        try:
            line = parse_record(raw)
        except LineLogError:
            continue
        if line.stream in streams:
            yield line


def newest_first(log_dir: Path, stem: str, streams: frozenset[Stream]) -> Iterator[LogLine]:
    for path in log_files(log_dir, stem):
        yield from parsed(lines_backwards(path), streams)


def select_back(newest: Iterable[LogLine], tail: int | None, since_ns: int | None) -> list[LogLine]:
    """From lines newest first: the last ``tail`` at or after ``since_ns``, oldest first."""
    out: list[LogLine] = []
    if tail is not None and tail <= 0:
        return out
    for line in newest:
        if since_ns is not None and line.ns < since_ns:
            break  # the files are in time order: all earlier lines are older
        out.append(line)
        if tail is not None and len(out) >= tail:
            break
    out.reverse()
    return out


def read_lines(
    log_dir: Path,
    stem: str,
    *,
    tail: int | None = None,
    since_ns: int | None = None,
    streams: frozenset[Stream],
) -> list[LogLine]:
    """The VM's lines in the files: the last ``tail`` (all: None) of those at or
    after ``since_ns`` (all: None), of the ``streams`` asked for, oldest first."""
    if tail is None and since_ns is None:
        files = reversed(log_files(log_dir, stem))
        return [line for path in files for line in parsed(lines_forwards(path), streams)]
    return select_back(newest_first(log_dir, stem, streams), tail, since_ns)


def pending_lines(chunks: list[bytes], streams: frozenset[Stream]) -> list[LogLine]:
    """The lines in records queued but not written yet (whole records, in order)."""
    out: list[LogLine] = []
    for chunk in chunks:
        out.extend(parsed((r for r in chunk.split(b"\n") if r), streams))
    return out
