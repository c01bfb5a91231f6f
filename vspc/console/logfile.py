"""Console log files: byte-exact and size-rotated (blocking code, run in the log thread).

``RotatingFile`` appends and rotates one file; ``OpenFiles`` is the log thread's
LRU of open files. The trio side is ``vspc.console.logwriter``.

Files: ``<dir>/<vm>_<label>.log`` and ``<dir>/<vm>_<label>.events.jsonl`` (``file_stem``).
At ``max_bytes`` the live file becomes ``.1`` (``.1`` becomes ``.2``...), and
only ``keep`` rotated files are kept. Log files are cut at exactly ``max_bytes``,
so ``cat x.log.N ... x.log.1 x.log`` gives back exactly the bytes the VM wrote
(as far as retention reaches). Event logs rotate between lines.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from common.io.fastsock import consume
from vspc.core.identity import PortKey

MAX_OPEN_FILES = 128
#: Most parts handed to one ``os.writev`` (the kernel's IOV_MAX).
IOV_MAX = 1024


def file_stem(key: PortKey) -> str:
    """``<vm>_<label>``, derived from the validated key only (never from wire text).

    A key holds no ``/`` and is never ``.`` or ``..`` (``PortKey`` checks the
    identity grammar), so the files stay inside the log directory. A ``_`` in the
    label is written ``%5F``, so the last ``_`` separates VM and label and no two
    keys share a file (``a_b``/``c`` and ``a``/``b_c``)."""
    return f"{key.uuid}_{key.label.replace('_', '%5F')}"


def rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


class RotatingFile:
    """A size-rotated append-only file. Blocking; one thread at a time."""

    __slots__ = ("_name", "fd", "size", "written")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._name = os.fspath(path)  # a str: opened once per write burst, keep it cheap
        self.fd: int | None = None
        self.size = 0
        self.written = 0  # bytes ever written through this object (partial writes count)

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
        that is a sequence of complete lines) rotates between lines, so no line
        is split and no file grows past ``max_bytes`` (but a line longer than
        that, alone in its file).
        """
        self.open()
        mv = memoryview(data)
        if whole_lines:
            self._write_lines(bytes(data), max_bytes, keep)
            return
        while mv:
            if self.size >= max_bytes:
                self.rotate(keep)
            room = max_bytes - self.size
            self._write_all(mv[:room])
            mv = mv[room:]

    def write_parts(self, parts: list[bytes], max_bytes: int, keep: int) -> None:
        """``write`` of each part in turn (byte mode), vectored while they fit in the
        live file: one system call (and one GIL hand-off in the log thread) for up
        to IOV_MAX parts, where a write each would take and give back the GIL."""
        for k in range(0, len(parts), IOV_MAX):
            group = parts[k : k + IOV_MAX]
            self.open()  # (the size is the file's)
            if len(group) == 1 or self.size + sum(map(len, group)) > max_bytes:
                for data in group:  # (a rotation among them: one at a time)
                    self.write(data, max_bytes, keep)
                continue
            self._writev_all([memoryview(p) for p in group if p])  # (none empty)

    def _write_lines(self, data: bytes, max_bytes: int, keep: int) -> None:
        mv = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            room = max_bytes - self.size
            if end - pos <= room:
                self._write_all(mv[pos:])
                return
            cut = data.rfind(b"\n", pos, pos + room) + 1 if room > 0 else 0
            if cut <= pos and self.size == 0:  # one line longer than a file: alone in it
                cut = data.find(b"\n", pos) + 1 or end
            if cut > pos:
                self._write_all(mv[pos:cut])
                pos = cut
            if pos < end:
                self.rotate(keep)

    def _writev_all(self, views: list[memoryview]) -> None:
        assert self.fd is not None
        while views:
            n = os.writev(self.fd, views)
            self.size += n
            self.written += n
            consume(views, n)

    def _write_all(self, mv: memoryview) -> None:
        assert self.fd is not None
        while mv:
            n = os.write(self.fd, mv)
            self.size += n
            self.written += n
            mv = mv[n:]


@dataclass
class OpenFiles:
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


def size_of(path: str) -> int:
    """The size of ``path``, 0 if it cannot be read."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def replace_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary file, then rename)."""
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    except (FileNotFoundError, NotADirectoryError):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        mv = memoryview(data)
        while mv:
            mv = mv[os.write(fd, mv) :]
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
