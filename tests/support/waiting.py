"""Waiting on an observable condition that has no event to wait on: a file's
size, a metric, a kernel socket state, a daemon's console list.

One mechanism for the whole test tree. It polls the predicate, and fails with
an ``AssertionError`` naming what did not happen if ``timeout`` seconds pass
first (``timeout=None``: the caller's own ``trio.fail_after`` bounds it). It is
synchronisation on the condition itself, never on the passing of time; wait on
an event instead whenever the code under test offers one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

DEFAULT_TIMEOUT = 10.0


def _failure(predicate: object, timeout: float | None, what: str) -> AssertionError:
    return AssertionError(f"not within {timeout} s: {what or predicate}")


async def wait_until(
    predicate: Callable[[], object],
    timeout: float | None = DEFAULT_TIMEOUT,
    what: str = "",
    *,
    interval: float = 0.01,
) -> None:
    """Until ``predicate()`` is true (checked at once, then every ``interval``)."""
    with trio.move_on_after(float("inf") if timeout is None else timeout):
        while not predicate():
            await trio.sleep(interval)
        return
    raise _failure(predicate, timeout, what)


async def wait_until_async(
    predicate: Callable[[], Awaitable[object]],
    timeout: float | None = DEFAULT_TIMEOUT,
    what: str = "",
    *,
    interval: float = 0.05,
) -> None:
    """Like ``wait_until`` for a predicate that must be awaited (a metrics scrape,
    a console list over the control socket, a connection attempt)."""
    with trio.move_on_after(float("inf") if timeout is None else timeout):
        while not await predicate():
            await trio.sleep(interval)
        return
    raise _failure(predicate, timeout, what)


async def wait_any(*events: trio.Event) -> None:
    """Until at least one of ``events`` is set (no polling)."""
    async with trio.open_nursery() as race:

        async def first(event: trio.Event) -> None:
            await event.wait()
            race.cancel_scope.cancel()

        for event in events:
            race.start_soon(first, event)
