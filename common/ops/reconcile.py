"""One way to apply a new config to running things (listeners, routes, watchers).

Both sides are keyed specs: ``running`` (what runs now, key -> the spec it was
started from) and ``wanted`` (the new config's). ``diff`` says what to stop (gone,
or changed), what to start (new, or changed: a restart) and what to keep; the
caller stops first (freeing addresses), then applies whatever else changed, then
starts with ``start_all``, which collects each failure as a ``ConfigError``
naming its key and starts the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from common.ops.config import ConfigError

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")
H = TypeVar("H", bound=Hashable)


def _equal(_key: object, old: object, new: object) -> bool:
    return old == new


@dataclass(frozen=True)
class Plan(Generic[K, S]):
    stop: tuple[K, ...]  # running, and gone or changed (in running order)
    start: tuple[tuple[K, S], ...]  # wanted, and new or changed (in wanted order)
    keep: tuple[K, ...]  # running, and still wanted as it is

    def restarts(self, key: K) -> bool:
        """Stopped to start again with a new spec (changed, not removed)."""
        return key in self.stop and any(k == key for k, _ in self.start)


def diff(
    running: Mapping[K, S],
    wanted: Mapping[K, S],
    *,
    same: Callable[[K, S, S], bool] = _equal,
) -> Plan[K, S]:
    """What to stop, start and keep to go from ``running`` to ``wanted``; ``same``
    decides whether a key present in both may keep running (default: equal specs)."""
    stop: list[K] = []
    keep: list[K] = []
    for key, spec in running.items():
        if key in wanted and same(key, spec, wanted[key]):
            keep.append(key)
        else:
            stop.append(key)
    kept = set(keep)
    start = tuple((k, s) for k, s in wanted.items() if k not in kept)
    return Plan(tuple(stop), start, tuple(keep))


def indexed(items: Sequence[S], key: Callable[[S], H]) -> dict[tuple[H, int], tuple[int, S]]:
    """A list of specs (``[[...]]`` tables) as keyed specs: ``(key, n)`` for the n-th
    item with that key (repeats stay distinct) -> (its index in the list, the item).
    Compare the items only (``same_item``): an item that moved in the list is kept."""
    seen: dict[H, int] = {}
    out: dict[tuple[H, int], tuple[int, S]] = {}
    for i, item in enumerate(items):
        k = key(item)
        n = seen[k] = seen.get(k, -1) + 1
        out[(k, n)] = (i, item)
    return out


def same_item(_key: object, old: tuple[int, object], new: tuple[int, object]) -> bool:
    """``same`` for ``indexed`` specs: equal items, wherever they are in the list."""
    return old[1] == new[1]


async def start_all(
    items: Iterable[tuple[K, S]],
    start: Callable[[K, S], Awaitable[object]],
    *,
    keep_going: bool = True,
) -> list[ConfigError]:
    """``await start(key, spec)`` for each; a ConfigError (naming its key) is
    collected and the others still start (or, without ``keep_going``, raised)."""
    errors: list[ConfigError] = []
    for key, spec in items:
        try:
            await start(key, spec)
        except ConfigError as e:
            if not keep_going:
                raise
            errors.append(e)
    return errors
