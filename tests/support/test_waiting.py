"""The shared waiting helpers: they return as soon as the condition holds and
fail, naming what did not happen, when it does not hold in time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.support.waiting import wait_any, wait_until, wait_until_async


async def test_wait_until_returns_once_the_condition_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box: list[int] = []

    async def later() -> None:
        await trio.sleep(3)
        box.append(1)

    async with trio.open_nursery() as n:
        n.start_soon(later)
        await wait_until(lambda: box, 10, "the box filled")
        assert 3 <= trio.current_time() < 3.1


async def test_wait_until_fails_naming_what_did_not_happen(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(AssertionError, match=r"not within 2\.0 s: the door opened"):
        await wait_until(lambda: False, 2.0, "the door opened")
    assert 2 <= trio.current_time() < 2.1


async def test_wait_until_async_awaits_the_predicate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[float] = []

    async def third_time() -> bool:
        calls.append(trio.current_time())
        return len(calls) == 3

    await wait_until_async(third_time, 10, interval=0.5)
    assert calls == [0.0, 0.5, 1.0]

    async def never() -> bool:
        return False

    with pytest.raises(AssertionError, match="not within 1 s: never true"):
        await wait_until_async(never, 1, "never true")


async def test_no_timeout_is_bounded_by_the_caller(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(trio.TooSlowError), trio.fail_after(5):
        await wait_until(lambda: False, None)


async def test_wait_any_returns_on_the_first_event() -> None:
    a, b = trio.Event(), trio.Event()
    returned = trio.Event()

    async def waiter() -> None:
        await wait_any(a, b)
        returned.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            n.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not returned.is_set()  # (every task blocked: it is really waiting)
            b.set()
            await returned.wait()
