"""A byte budget shared by many streams (sans-IO), like h2's window manager.

The mux's connection window (credit granted to the peer over all streams) and
the replay pool (replay-buffer memory over all streams of a router or session
table) are both a ``Budget``: ``limit`` bytes in all, ``used`` so far; a stream
that finds too little waits in ``waiting`` and freed bytes go to the waiting
streams in turn (FIFO). Each user decides whom it serves and how.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

W = TypeVar("W")


class Budget(Generic[W]):
    __slots__ = ("limit", "used", "waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.waiting: deque[W] = deque()

    @property
    def free(self) -> int:
        """``limit - used``: negative when a reserve beyond the limit is in use."""
        return self.limit - self.used

    def available(self) -> int:
        return max(0, self.limit - self.used)

    def take(self, n: int) -> None:
        self.used += n

    def release(self, n: int) -> None:
        self.used -= n

    def wait(self, waiter: W) -> None:
        self.waiting.append(waiter)
