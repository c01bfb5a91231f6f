"""common.ops.lifecycle: phases, the graceful drain, waiting on changes (MockClock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from common.ops import lifecycle, sdnotify
from common.ops.lifecycle import Changed, Lifecycle, LifecycleError, Phase


def test_phases_follow_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    life = Lifecycle()
    assert life.phase is Phase.STARTING and not life.accepting
    life.start_accepting()
    assert life.accepting
    assert life.begin_drain()
    assert life.phase is Phase.DRAINING and life.stopping and not life.accepting
    assert not life.begin_drain()  # a second SIGTERM changes nothing
    life.start_accepting()  # too late: stays draining
    assert life.phase is Phase.DRAINING
    life.finish()
    assert life.phase is Phase.STOPPED and life.stopped.is_set() and life.stopping
    life.finish()  # idempotent
    assert not life.begin_drain()


def test_a_transition_outside_the_table_is_a_bug() -> None:
    life = Lifecycle()
    life.finish()
    with pytest.raises(LifecycleError, match="stopped -> running"):
        life._move(Phase.RUNNING)


def test_sd_notify_states(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, ...]] = []

    def notify(*states: str) -> bool:
        sent.append(states)
        return True

    monkeypatch.setattr(sdnotify, "notify", notify)
    life = Lifecycle()
    life.ready("STATUS=x")
    with pytest.raises(RuntimeError), life.reloading(lambda: ("STATUS=y",)):
        raise RuntimeError("the reload failed")
    life.begin_drain()
    assert sent[0] == ("READY=1", "STATUS=x")
    assert sent[1][0] == "RELOADING=1" and sent[1][1].startswith("MONOTONIC_USEC=")
    assert sent[2:] == [("READY=1", "STATUS=y"), ("STOPPING=1",)]


async def test_graceful_returns_when_idle_before_the_deadline(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    done = trio.Event()
    cut: list[bool] = []

    async def finish_later() -> None:
        await trio.sleep(3)
        done.set()

    async with trio.open_nursery() as n:
        n.start_soon(finish_later)
        start = trio.current_time()
        assert await lifecycle.graceful(start + 10, done.wait, lambda: cut.append(True))
        assert trio.current_time() - start == pytest.approx(3)
    assert cut == []


async def test_graceful_cuts_at_the_deadline(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    cut: list[float] = []
    start = trio.current_time()
    idle_in_time = await lifecycle.graceful(
        start + 10, trio.sleep_forever, lambda: cut.append(trio.current_time())
    )
    assert not idle_in_time
    assert cut == [pytest.approx(start + 10)]


async def test_wait_until_wakes_on_each_change_only() -> None:
    changed = Changed()
    count = 0
    woke = trio.Event()

    async def waiter() -> None:
        await changed.wait_until(lambda: count >= 2)
        woke.set()

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        count = 1
        changed.notify()
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        count = 2
        changed.notify()
        await woke.wait()


async def test_changed_without_waiters_costs_no_event() -> None:
    changed = Changed()
    changed.notify()
    assert changed._event is None
    await changed.wait_until(lambda: True)  # already true: no wait
    assert changed._event is None


async def test_watchdog_returns_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    await lifecycle.watchdog()
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    await lifecycle.watchdog()


async def test_watchdog_pings_at_half_the_interval(
    monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    pings: list[float] = []
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")

    def ping() -> bool:
        pings.append(trio.current_time())
        return True

    monkeypatch.setattr(sdnotify, "watchdog", ping)
    start = trio.current_time()
    with trio.move_on_after(5):
        await lifecycle.watchdog()
    assert [p - start for p in pings] == pytest.approx([0, 2, 4])
