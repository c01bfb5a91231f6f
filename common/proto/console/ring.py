"""Replay ring: the last ``capacity`` bytes a VM wrote.

Sans-IO. Memory grows with the data (a quiet VM costs next to nothing) up to
``capacity``; once full it is a fixed circular buffer. An immutable chunk at
least as big as the ring (and at most 4x) is kept by reference instead of being
copied: while a VM writes in bulk the ring copies nothing; the next smaller
chunk copies its tail into the buffer first.
"""

from __future__ import annotations

from typing import TypeGuard


class Ring:
    __slots__ = ("_buf", "_cap", "_full", "_head", "_tail", "total")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._cap = capacity
        self._buf = bytearray()
        self._full = False  # circular mode: len(_buf) == _cap, oldest byte at _head
        self._head = 0
        # When set: the ring's content is the last _cap bytes of this (immutable) chunk.
        self._tail: bytes | memoryview | None = None
        self.total = 0  # bytes ever appended

    @property
    def capacity(self) -> int:
        return self._cap

    def __len__(self) -> int:
        return self._cap if self._full or self._tail is not None else len(self._buf)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        self.total += n
        cap = self._cap
        if n == 0 or cap == 0:
            return
        if n >= cap:
            if n <= 4 * cap and _immutable(data):
                self._tail = data  # no copy
                return
            self._tail = None
            self._fill(data)
            return
        if self._tail is not None:
            self._settle()
        if not self._full:
            room = cap - len(self._buf)
            if n <= room:
                self._buf += data
                if n == room:
                    self._full = True
                    self._head = 0
                return
            # becomes full: keep the last cap bytes in a fresh exact-size buffer
            keep = cap - n
            self._buf = bytearray(self._buf[len(self._buf) - keep :]) + data
            self._full = True
            self._head = 0
            return
        # circular: overwrite the oldest n bytes
        buf = self._buf
        h = self._head
        first = min(n, cap - h)
        mv = memoryview(data)
        buf[h : h + first] = mv[:first]
        if first < n:
            buf[: n - first] = mv[first:]
        self._head = (h + n) % cap

    def _settle(self) -> None:
        """Copy the referenced chunk's tail into the buffer (the ring becomes circular)."""
        t = self._tail
        assert t is not None
        self._tail = None
        self._fill(t)

    def _fill(self, data: bytes | bytearray | memoryview) -> None:
        """The ring becomes the last ``capacity`` bytes of ``data`` (at least that long)."""
        tail = memoryview(data)[len(data) - self._cap :]
        if self._full:
            self._buf[:] = tail  # same size: copied in place, no new buffer
        else:
            self._buf = bytearray(tail)
            self._full = True
        self._head = 0

    def last(self, n: int) -> bytes:
        """The last ``min(n, len(self))`` bytes, oldest first."""
        size = len(self)
        n = max(0, min(n, size))
        if n == 0:
            return b""
        if self._tail is not None:
            t = self._tail
            return bytes(t[len(t) - n :])
        if not self._full:
            return bytes(self._buf[size - n :])
        buf = self._buf
        start = (self._head - n) % self._cap
        if start < self._head:
            return bytes(buf[start : self._head])
        return bytes(buf[start:]) + bytes(buf[: self._head])

    def resize(self, capacity: int) -> None:
        """Change the capacity, keeping the newest bytes that still fit."""
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._refill(capacity, b"", self.last(capacity))

    def prepend(self, older: bytes) -> None:
        """Put ``older`` before the content (as far as it fits); ``total`` is unchanged."""
        keep = self.last(self._cap)
        room = self._cap - len(keep)
        self._refill(self._cap, older[max(0, len(older) - room) :] if room else b"", keep)

    def _refill(self, capacity: int, first: bytes, then: bytes) -> None:
        total = self.total
        self._cap = capacity
        self._buf = bytearray()
        self._full = False
        self._head = 0
        self._tail = None
        self.append(first + then)
        self.total = total


def _immutable(data: bytes | bytearray | memoryview) -> TypeGuard[bytes | memoryview]:
    if type(data) is bytes:
        return True
    return isinstance(data, memoryview) and type(data.obj) is bytes and data.itemsize == 1
