"""How long the vSPC's event loop runs without looking at its sockets (optional).

A VMOTION-BEGIN that arrives while the loop runs tasks waits until the loop next
asks the kernel what is ready, and then for its reader's turn in the next batch.
``LoopWatch`` (a trio Instrument) measures both: each task step (``before_task_step``
to ``after_task_step``) and each batch (from one I/O wait to the next), and exports
them as Prometheus histograms, the longest step and batch since the previous scrape
as gauges, and the time spent per task kind (the task's name: its coroutine
function), so the longest step can be traced to what ran it.

Off by default (an instrument costs a little on every step): ``VIC_VSPC_LOOPWATCH=1``
in the vSPC's environment turns it on (the benches do).
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

import trio
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

ENV = "VIC_VSPC_LOOPWATCH"

#: Upper bounds (seconds) of the step and batch histograms.
BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.1,
    1.0,
)


class _Durations:
    """Counts per bucket, their sum, and the longest since it was last taken."""

    __slots__ = ("counts", "longest", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.longest = 0.0

    def add(self, d: float, longest: bool = True) -> None:
        self.counts[bisect_left(BUCKETS, d)] += 1
        self.total += d
        if longest and d > self.longest:
            self.longest = d

    def take_longest(self) -> float:
        longest, self.longest = self.longest, 0.0
        return longest

    def histogram(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)


class LoopWatch(trio.abc.Instrument, Collector):
    """The trio Instrument; also the Prometheus collector of what it measured."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._step_at = clock()  # (installed during a step: that step counts from here)
        self._batch_at: float | None = None
        self.steps = _Durations()
        self.batches = _Durations()
        #: task name -> [steps, seconds, longest step]
        self.by_task: dict[str, list[float]] = {}
        #: The task whose step is reading these figures (a scrape): that step ends after
        #: the longest-step gauges were taken, so it does not count as the next longest.
        self._collector: trio.lowlevel.Task | None = None

    # -- trio.abc.Instrument ---------------------------------------------------
    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_at = self._clock()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        d = self._clock() - self._step_at
        scrape = task is self._collector
        if scrape:
            self._collector = None
        self.steps.add(d, not scrape)
        rec = self.by_task.get(task.name)
        if rec is None:
            rec = self.by_task[task.name] = [0, 0.0, 0.0]
        rec[0] += 1
        rec[1] += d
        if d > rec[2] and not scrape:
            rec[2] = d

    def after_io_wait(self, timeout: float) -> None:
        self._batch_at = self._clock()

    def before_io_wait(self, timeout: float) -> None:
        if self._batch_at is not None:
            self.batches.add(self._clock() - self._batch_at)

    # -- prometheus Collector -----------------------------------------------------
    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        try:
            self._collector = trio.lowlevel.current_task()
        except RuntimeError:  # (not from the loop: a thread)
            self._collector = None
        yield self.steps.histogram(
            "vspc_event_loop_step_seconds", "duration of one task step of the event loop"
        )
        yield self.batches.histogram(
            "vspc_event_loop_batch_seconds",
            "time the event loop ran tasks between two looks at its sockets",
        )
        yield GaugeMetricFamily(
            "vspc_event_loop_longest_step_seconds",
            "the longest task step since the previous scrape",
            value=self.steps.take_longest(),
        )
        yield GaugeMetricFamily(
            "vspc_event_loop_longest_batch_seconds",
            "the longest batch of task steps since the previous scrape",
            value=self.batches.take_longest(),
        )
        per_task = GaugeMetricFamily(
            "vspc_event_loop_task_longest_step_seconds",
            "the longest step of each kind of task (its name) since the previous scrape",
            labels=["task"],
        )
        seconds = GaugeMetricFamily(
            "vspc_event_loop_task_seconds",
            "time spent in the steps of each kind of task (its name) so far",
            labels=["task"],
        )
        for name, rec in sorted(self.by_task.items()):
            per_task.add_metric([name], rec[2])
            seconds.add_metric([name], rec[1])
            rec[2] = 0.0
        yield per_task
        yield seconds


def install(registry: CollectorRegistry) -> LoopWatch | None:
    """Watch the current trio loop if ``VIC_VSPC_LOOPWATCH`` is set (else None); the
    figures go to ``registry``. Undo with ``uninstall``."""
    if os.environ.get(ENV, "") in ("", "0"):
        return None
    watch = LoopWatch()
    trio.lowlevel.add_instrument(watch)
    registry.register(watch)
    return watch


def uninstall(watch: LoopWatch | None, registry: CollectorRegistry) -> None:
    if watch is None:
        return
    try:
        trio.lowlevel.remove_instrument(watch)
    except KeyError:
        pass
    registry.unregister(watch)
