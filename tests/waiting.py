"""Polling an observable condition that has no event to wait on, with a deadline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until true; an AssertionError naming ``what`` after ``timeout``."""
    try:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.02)
    except trio.TooSlowError:
        raise AssertionError(f"not within {timeout} s: {what or predicate}") from None


async def wait_for_async(predicate: Callable[[], Awaitable[object]], timeout: float = 10.0,
                         what: str = "") -> None:
    """Like wait_for, for an async predicate (a metrics scrape, a console list)."""
    try:
        with trio.fail_after(timeout):
            while not await predicate():
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(f"not within {timeout} s: {what or predicate}") from None
