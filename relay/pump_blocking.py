"""Blocking reads for a bulk thread (relay.pump_bulk) on a socket that trio owns.

A bulk thread that polls its non-blocking source pays, every time the source
runs dry, for a failed splice, a poll and the way back through Python before
the next read, while the sender waits for the relay to take its bytes; on a
Unix socket that alone cost the splice floor (bench/_splice_floor.py, blocking
reads) 13-28% of its throughput when it was made to poll the same way. So the
thread reads its source in blocking mode when it safely can.

O_NONBLOCK belongs to the socket's open file, which the other direction of the
same pump writes through (its destination is this direction's source): a write
there while the flag is off could block the event loop. ``BlockingSource``
keeps the flag off only while that other direction sits in its read wait
(``waiting``); it turns the flag back on, under a lock the thread takes too,
as the other direction wakes (``woke``), before it writes anything. A read
the thread started in blocking mode may go on blocking meanwhile; that harms
no one (the flag is read when a call starts). Every blocking read ends within
``timeout`` (SO_RCVTIMEO), so the thread still sees a stop, a freeze or a
closed stream as it did. ``detach`` (when the thread returned) puts the flag
and the timeout back: nothing outside the thread ever sees them changed.

Sockets only (the timeout); a direction whose other half never waits (a copy
loop, or a thread of its own) keeps its source non-blocking.
"""

from __future__ import annotations

import os
import socket
import struct
import threading


def _set_rcvtimeo(fd: int, seconds: float) -> None:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        usec = int(seconds * 1e6)
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", *divmod(usec, 10**6))
        )
    finally:
        sock.close()


class BlockingSource:
    """One direction's source socket, read in blocking mode by its bulk thread while
    the pump's other direction (the one writing to that socket) waits to read."""

    __slots__ = ("_fd", "_lock", "blocked", "writer_waits")

    def __init__(self) -> None:
        self._lock: threading.Lock | None = None  # (made by attach: a pump that never
        # runs a thread pays for none)
        self._fd = -1  # the thread's duplicate of the source, while one is attached
        self.writer_waits = False  # the other direction is in its read wait
        self.blocked = False  # O_NONBLOCK is off now

    # ---- the other direction (the trio thread), around its read wait
    def waiting(self) -> None:
        """The other direction waits to read: it writes nothing until ``woke``."""
        self.writer_waits = True

    def woke(self) -> None:
        """The other direction may write from now on: the socket is non-blocking."""
        lock = self._lock
        if self._fd < 0 or lock is None:  # no thread attached (the only other party)
            self.writer_waits = False
            return
        with lock:
            self.writer_waits = False
            if self.blocked:
                os.set_blocking(self._fd, False)
                self.blocked = False

    # ---- the bulk thread's burst
    def attach(self, fd: int, timeout: float) -> None:
        """A thread reads ``fd`` (its duplicate of the source) from now on; its
        blocking reads end after ``timeout`` (trio thread, before it starts)."""
        _set_rcvtimeo(fd, timeout)
        if self._lock is None:
            self._lock = threading.Lock()
        self._fd = fd

    def try_block(self) -> bool:
        """(thread) Turn blocking reads on if the other direction waits: blocked?"""
        lock = self._lock
        if lock is None:  # never attached
            return False
        with lock:
            if self.writer_waits and not self.blocked and self._fd >= 0:
                os.set_blocking(self._fd, True)
                self.blocked = True
            return self.blocked

    def detach(self) -> None:
        """The thread returned: the socket is as trio left it (trio thread)."""
        fd, self._fd = self._fd, -1
        if fd < 0 or self._lock is None:
            return
        with self._lock:
            if self.blocked:
                os.set_blocking(fd, False)
                self.blocked = False
        _set_rcvtimeo(fd, 0.0)
