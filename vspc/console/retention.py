"""Which departed consoles to forget (sans-IO: times come in as arguments).

A console *departs* when its last VM connection and its last client are gone,
and *returns* when either comes back. Departed consoles are forgotten oldest
first once they have been away ``seconds``, or at once beyond ``max_departed``
of them; their log files stay, and serve ``list`` and replay from disk.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Retention(Generic[K]):
    __slots__ = ("_departed", "max_departed", "seconds")

    def __init__(self, seconds: float, max_departed: int) -> None:
        self.seconds = seconds
        self.max_departed = max_departed
        self._departed: OrderedDict[K, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._departed)

    def __contains__(self, key: object) -> bool:
        return key in self._departed

    def reconfigure(self, seconds: float, max_departed: int) -> None:
        self.seconds = seconds
        self.max_departed = max_departed

    def departed(self, key: K, now: float) -> bool:
        """``key`` went away at ``now``; whether there are now too many departed."""
        self._departed.pop(key, None)
        self._departed[key] = now
        return len(self._departed) > self.max_departed

    def returned(self, key: K) -> None:
        self._departed.pop(key, None)

    def due(self, now: float) -> list[K]:
        """Departed keys to forget now, oldest first (the caller calls ``returned``)."""
        over = len(self._departed) - self.max_departed
        out: list[K] = []
        for i, (key, since) in enumerate(self._departed.items()):
            if i >= over and now - since < self.seconds:
                break
            out.append(key)
        return out

    def next_due(self) -> float | None:
        """When the oldest departed key falls due (None: none departed)."""
        for since in self._departed.values():
            return since + self.seconds
        return None
