"""Waiting on an observable condition that has no event to wait on: a file's
size, a metric, a kernel socket state, a daemon's console list.

The tests' defaults over the one poll, ``vic.lab.polling`` (shared with the
lab). It polls the predicate, and fails with
an ``AssertionError`` naming what did not happen if ``timeout`` seconds pass
first (``timeout=None``: the caller's own ``trio.fail_after`` bounds it). It is
synchronisation on the condition itself, never on the passing of time; wait on
an event instead whenever the code under test offers one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from vic.lab import polling

DEFAULT_TIMEOUT = 10.0


async def wait_until(
    predicate: Callable[[], object],
    timeout: float | None = DEFAULT_TIMEOUT,
    what: str = "",
    *,
    interval: float = 0.01,
) -> None:
    """Until ``predicate()`` is true (checked at once, then every ``interval``)."""
    await polling.wait_until(lambda: bool(predicate()), timeout, what=what, interval=interval)


async def wait_until_async(
    predicate: Callable[[], Awaitable[object]],
    timeout: float | None = DEFAULT_TIMEOUT,
    what: str = "",
    *,
    interval: float = 0.05,
) -> None:
    """Like ``wait_until`` for a predicate that must be awaited (a metrics scrape,
    a console list over the control socket, a connection attempt)."""

    async def check() -> bool:
        return bool(await predicate())

    await polling.wait_until(check, timeout, what=what, interval=interval)


async def wait_any(*events: trio.Event) -> None:
    """Until at least one of ``events`` is set (no polling)."""
    async with trio.open_nursery() as race:

        async def first(event: trio.Event) -> None:
            await event.wait()
            race.cancel_scope.cancel()

        for event in events:
            race.start_soon(first, event)
