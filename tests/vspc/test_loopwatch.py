"""vspc.loopwatch: the event loop's longest step and batch, per task kind."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest

from vspc import loopwatch


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _slow_step(clock: _Clock, seconds: float) -> None:
    clock.now += seconds  # this step "takes" `seconds`
    await trio.lowlevel.checkpoint()


async def test_longest_step_is_traced_to_its_task() -> None:
    clock = _Clock()
    watch = loopwatch.LoopWatch(clock)
    trio.lowlevel.add_instrument(watch)
    try:
        async with trio.open_nursery() as n:
            n.start_soon(_slow_step, clock, 0.003)
            n.start_soon(_slow_step, clock, 0.0001)
    finally:
        trio.lowlevel.remove_instrument(watch)
    assert watch.steps.longest == pytest.approx(0.003)
    assert watch.batches.longest >= 0.003  # both ran in one batch
    name = f"{__name__}._slow_step"
    steps, seconds, longest = watch.by_task[name]
    assert steps >= 4  # two tasks, two steps each
    assert seconds == pytest.approx(0.0031)
    assert longest == pytest.approx(0.003)


async def test_exported_and_longest_restarts_at_each_scrape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = CollectorRegistry()
    monkeypatch.delenv(loopwatch.ENV, raising=False)
    assert loopwatch.install(registry) is None
    monkeypatch.setenv(loopwatch.ENV, "1")
    watch = loopwatch.install(registry)
    assert watch is not None
    try:
        await trio.testing.wait_all_tasks_blocked()
        watch.steps.take_longest()  # (real steps so far: no await from here on)
        watch.steps.add(0.002)
        text = generate_latest(registry).decode()
        assert "vspc_event_loop_longest_step_seconds 0.002" in text
        assert 'vspc_event_loop_step_seconds_bucket{le="0.002"}' in text
        assert "vspc_event_loop_batch_seconds_count" in text
        watch.by_task["t"] = [1, 0.004, 0.004]
        text = generate_latest(registry).decode()
        assert 'vspc_event_loop_task_longest_step_seconds{task="t"} 0.004' in text
        again = generate_latest(registry).decode()
        assert "vspc_event_loop_longest_step_seconds 0.002" not in again
        assert 'vspc_event_loop_task_longest_step_seconds{task="t"} 0.0' in again
        assert 'vspc_event_loop_task_seconds{task="t"} 0.004' in again
    finally:
        loopwatch.uninstall(watch, registry)
    assert "vspc_event_loop" not in generate_latest(registry).decode()


async def test_a_scrapes_own_step_is_not_the_next_longest() -> None:
    clock = _Clock()
    watch = loopwatch.LoopWatch(clock)
    registry = CollectorRegistry()
    registry.register(watch)

    async def scrape() -> None:
        generate_latest(registry)  # the gauges are taken here, mid-step
        clock.now += 0.05  # the rest of this step (a large registry's text)
        await trio.lowlevel.checkpoint()

    trio.lowlevel.add_instrument(watch)
    try:
        async with trio.open_nursery() as n:
            n.start_soon(scrape)
        async with trio.open_nursery() as n:  # (after it: the scrape restarts the gauges)
            n.start_soon(_slow_step, clock, 0.001)
    finally:
        trio.lowlevel.remove_instrument(watch)
    assert watch.steps.longest == pytest.approx(0.001)
    assert watch.by_task[f"{__name__}._slow_step"][2] == pytest.approx(0.001)
    assert watch.steps.total >= 0.05  # still in the histogram
