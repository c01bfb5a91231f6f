"""Pseudo-terminals for execs: open with a size, resize, end of input, read to EOF.

Resizing sets the size on the master (``TIOCSWINSZ``); when it changes, the kernel
sends SIGWINCH to the terminal's foreground process group. If the terminal has no
foreground group (the process gave up its controlling terminal) we send SIGWINCH to
the exec's own process group instead, so the size change is never silent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pty
import signal
import struct
import termios

import trio

_WINSIZE = struct.Struct("HHHH")


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, _WINSIZE.pack(rows, cols, 0, 0))


def get_winsize(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = _WINSIZE.unpack(fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(_WINSIZE.size)))
    return rows, cols


def open_pty(rows: int, cols: int) -> tuple[int, int]:
    """(master, slave), both close-on-exec (the slave is dup'ed onto the child's 0-2)."""
    master, slave = pty.openpty()
    try:
        for fd in (master, slave):
            os.set_inheritable(fd, False)
        if rows and cols:
            set_winsize(master, rows, cols)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave


def resize(master: int, rows: int, cols: int, group: int) -> None:
    """New window size; SIGWINCH by the kernel to the foreground group, else to ``group``."""
    if get_winsize(master) == (rows, cols):
        return
    set_winsize(master, rows, cols)
    try:
        fg = os.tcgetpgrp(master)  # on a master: the slave's foreground group
    except OSError:
        fg = 0
    if fg <= 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGWINCH)


def eof_char(master: int) -> bytes:
    """The terminal's end-of-file character (VEOF, normally ^D)."""
    try:
        c = termios.tcgetattr(master)[6][termios.VEOF]
    except termios.error:
        return b"\x04"
    return c if isinstance(c, bytes) and c else b"\x04"


def take_controlling_tty() -> None:  # pragma: no cover - runs in the child before exec
    """Make the terminal on fd 0 the controlling terminal of the new session."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def receive_pty(stream: trio.lowlevel.FdStream, max_bytes: int) -> bytes:
    """Read from a master: EIO (every slave fd closed) is the end of output, b""."""
    try:
        return await stream.receive_some(max_bytes)
    except trio.BrokenResourceError as e:
        if isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.EIO:
            return b""
        raise
