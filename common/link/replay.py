"""Replay-buffer memory shared by the resumable streams of one Router or SessionTable."""

from __future__ import annotations

from typing import Protocol

from common.proto.link.budget import Budget


class Waker(Protocol):
    def _notify(self) -> None: ...


class ReplayPool(Budget[Waker]):
    """Replay-buffer memory shared by many streams (one Router or SessionTable).

    Each stream may always hold ``reserve`` bytes; beyond that it draws from the
    pool, at most its fair share (``limit / streams``), so a thousand streams
    cannot each fill a ``replay_limit`` buffer and one fast stream cannot take
    everything: the memory a relay holds for replay is bounded by
    ``limit + streams * reserve``. Waiting streams are woken in turn (FIFO).
    """

    __slots__ = ("members", "reserve")

    def __init__(self, limit: int, reserve: int) -> None:
        super().__init__(limit)
        self.reserve = reserve
        self.members = 0

    def share(self) -> int:
        return self.limit // max(1, self.members)

    def give(self, n: int) -> None:
        if n > 0:
            self.release(n)
            # wake waiting streams in turn, about one per reserve's worth freed
            for _ in range(min(len(self.waiting), max(1, n // max(self.reserve, 1)))):
                self.waiting.popleft()._notify()

    def enqueue(self, stream: Waker) -> None:
        self.wait(stream)
