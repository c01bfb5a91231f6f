"""Contenders measured in rounds, interleaved: round 1 runs A, B, C; round 2 runs them again;
and so on. A burst of CPU stolen by the hypervisor, or another process's load, then lands
on every contender alike instead of on whichever ran all its repetitions during it. With
``rotate`` each round starts one contender later (A B C, B C A, C A B), so none always
runs first (cold caches) or last.

Every bench that compares contenders runs them through ``interleaved`` (or
``ainterleaved`` under trio): the one copy of the mechanism.

Benches run as scripts with ``bench/`` on ``sys.path``, so this imports as ``_rounds``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def order(rnd: int, contenders: Sequence[str], rotate: bool = False) -> list[str]:
    """The contenders in the order round ``rnd`` (from 0) runs them."""
    names = list(contenders)
    if rotate and names:
        k = rnd % len(names)
        names = names[k:] + names[:k]
    return names


def interleaved(
    rounds: int,
    contenders: Sequence[str],
    run: Callable[[int, str], T],
    *,
    rotate: bool = False,
) -> dict[str, list[T]]:
    """``run(round, contender)`` for every contender in every round, one round after the
    other: each contender's results in round order."""
    out: dict[str, list[T]] = {c: [] for c in contenders}
    for rnd in range(rounds):
        for c in order(rnd, contenders, rotate):
            out[c].append(run(rnd, c))
    return out


async def ainterleaved(
    rounds: int,
    contenders: Sequence[str],
    run: Callable[[int, str], Awaitable[T]],
    *,
    rotate: bool = False,
) -> dict[str, list[T]]:
    """``interleaved`` for an async ``run``."""
    out: dict[str, list[T]] = {c: [] for c in contenders}
    for rnd in range(rounds):
        for c in order(rnd, contenders, rotate):
            out[c].append(await run(rnd, c))
    return out


def median_run(results: Sequence[T], key: Callable[[T], float]) -> T:
    """The result whose ``key`` is the median of all of them (the lower one of the middle
    two for an even count): a whole run to report, for benches whose runs are records,
    not numbers."""
    if not results:
        raise ValueError("no results")
    return sorted(results, key=key)[(len(results) - 1) // 2]
