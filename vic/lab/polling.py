"""Waiting for a condition that has no event to wait on, for the lab and the tests.

Most waits have an event (a ``trio.Event``, a stream's EOF, a child's exit). Some
conditions are only observable: a file another process writes, a metric scraped over
HTTP, /proc, a FIN the kernel delivers on its own time, a counter in a daemon that
signals nothing. For those, this is the one poll: check, sleep briefly, check again,
within a deadline (``timeout``, or the caller's own cancel scope when it is None).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import trio

POLL_INTERVAL = 0.01


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float | None = None,
    *,
    what: str = "",
    interval: float = POLL_INTERVAL,
) -> None:
    """Return once ``predicate()`` (sync or async) is true; poll every ``interval``.

    With ``timeout``, raise AssertionError naming ``what`` when it passes; without, the
    caller bounds the wait (``trio.fail_after`` / ``move_on_after`` around it)."""
    deadline = trio.current_time() + timeout if timeout is not None else float("inf")
    try:
        with trio.fail_at(deadline):
            while True:
                ok = predicate()
                if inspect.isawaitable(ok):
                    ok = await ok
                if ok:
                    return
                await trio.sleep(interval)
    except trio.TooSlowError:
        raise AssertionError(f"not within {timeout} s: {what or predicate}") from None
