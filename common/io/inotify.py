"""Minimal inotify (ctypes) for trio: wake when files in a directory change."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

import trio

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Inotify:
    """One inotify instance watching one or more directories; ``wait()`` returns on any event."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self.fd: int = fd

    def add_watch(self, path: str, mask: int = IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE) -> int:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_add_watch {path}: {os.strerror(e)}")
        return int(wd)

    def drain(self) -> bool:
        """Consume pending events; True if there were any."""
        got = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return got
            except OSError as e:  # pragma: no cover
                if e.errno == errno.EINTR:
                    continue
                raise
            if not data:
                return got
            got = True

    async def wait(self) -> None:
        while not self.drain():
            await trio.lowlevel.wait_readable(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
