"""A pool of kernel pipes for the splice fast path.

Each pipe is created non-blocking, sized once (F_SETPIPE_SZ, 1 MiB by default)
and reused. A pump direction takes a pipe only while data is moving and gives it
back as soon as the pipe is empty and its source would block, so an idle stream
holds no pipe at all: only its two sockets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import termios

DEFAULT_PIPE_SIZE = 1 << 20
DEFAULT_MAX_IDLE = 32


class Pipe:
    """Both ends of one kernel pipe; ``size`` is the capacity the kernel granted."""

    __slots__ = ("r", "size", "w")

    def __init__(self, r: int, w: int, size: int) -> None:
        self.r = r
        self.w = w
        self.size = size

    def pending(self) -> int:
        """Bytes currently in the pipe (FIONREAD)."""
        buf = fcntl.ioctl(self.r, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", buf)[0])

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.r = self.w = -1


class PipePool:
    """Reusable pipes. Not thread-safe; meant for one trio run (or one thread)."""

    def __init__(self, size: int = DEFAULT_PIPE_SIZE, max_idle: int = DEFAULT_MAX_IDLE) -> None:
        if size <= 0:
            raise ValueError("pipe size must be positive")
        self.size = size
        self.max_idle = max_idle
        self._idle: list[Pipe] = []
        self.in_use = 0
        self.created = 0
        self.closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    def _new_pipe(self) -> Pipe:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self.size)
        except OSError:
            # Over pipe-max-size or the per-user pipe budget: keep the default.
            size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        self.created += 1
        return Pipe(r, w, size)

    def acquire(self) -> Pipe:
        pipe = self._idle.pop() if self._idle else self._new_pipe()
        self.in_use += 1
        return pipe

    def release(self, pipe: Pipe, *, empty: bool = False) -> None:
        """Give back a pipe; one that still holds data (or a full pool) closes it.

        ``empty=True``: the caller knows the pipe is empty (skips a FIONREAD).
        """
        self.in_use -= 1
        if self.closed or len(self._idle) >= self.max_idle or pipe.r < 0:
            pipe.close()
            return
        if empty:
            clean = True
        else:
            try:
                clean = pipe.pending() == 0
            except OSError:
                clean = False
        if clean:
            self._idle.append(pipe)
        else:
            pipe.close()

    def discard(self, pipe: Pipe) -> None:
        """Give back a pipe whose contents are to be thrown away."""
        self.in_use -= 1
        pipe.close()

    def close(self) -> None:
        self.closed = True
        while self._idle:
            self._idle.pop().close()


_default: PipePool | None = None


def default_pool() -> PipePool:
    """The process-wide pool used when a pump is given none."""
    global _default
    if _default is None or _default.closed:
        _default = PipePool()
    return _default
