"""One daemon lifecycle, shaped like hypercorn's shutdown: starting -> running ->
draining -> stopped.

* signals (``common.ops.daemon.watch_signals``): SIGHUP reloads, SIGTERM/SIGINT
  terminate;
* terminate: stop accepting (``begin_drain``, which also says ``STOPPING=1``), then a
  graceful drain: wait for live work to end, on an event, never on a timer tick,
  until a deadline; at the deadline cancel what is left (``graceful``);
* reload: ``RELOADING=1`` ... ``READY=1`` around applying the new config
  (``reloading``; what to apply is ``common.ops.reconcile``).

The relay and the vSPC both run on it; the guest agent only stops
(``common.ops.daemon.stop_signal``).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import trio

from common.ops import sdnotify


class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


# The phases each phase may move to (a daemon may stop without ever draining).
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.RUNNING, Phase.DRAINING, Phase.STOPPED}),
    Phase.RUNNING: frozenset({Phase.DRAINING, Phase.STOPPED}),
    Phase.DRAINING: frozenset({Phase.STOPPED}),
    Phase.STOPPED: frozenset(),
}


class LifecycleError(RuntimeError):
    """A transition the table does not allow (a bug in the daemon)."""


class Lifecycle:
    """Where a daemon is in its life, and the sd_notify states that go with it."""

    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.stopping = False  # a drain was asked for (stays True once stopped)
        self.stopped = trio.Event()

    def _move(self, to: Phase) -> None:
        if to not in TRANSITIONS[self.phase]:
            raise LifecycleError(f"{self.phase.value} -> {to.value}")
        self.phase = to

    @property
    def accepting(self) -> bool:
        """New work is taken only while running."""
        return self.phase is Phase.RUNNING

    def start_accepting(self) -> None:
        """Starting -> running (a daemon told to stop before it ran stays stopping)."""
        if self.phase is Phase.STARTING:
            self._move(Phase.RUNNING)

    def ready(self, *status: str) -> None:
        """``READY=1`` (with any ``STATUS=...``): started, or done reloading."""
        sdnotify.notify("READY=1", *status)

    @contextmanager
    def reloading(self, status: Callable[[], tuple[str, ...]] = tuple) -> Iterator[None]:
        """``RELOADING=1`` now, ``READY=1`` (with ``status()``) however the reload ends."""
        sdnotify.reloading()
        try:
            yield
        finally:
            self.ready(*status())

    def begin_drain(self, *, announce: bool = True) -> bool:
        """Stop accepting and say ``STOPPING=1`` (not with ``announce=False``: a
        successor process carries the service on); False when already stopping."""
        if self.stopping or self.phase is Phase.STOPPED:
            return False
        self.stopping = True
        self._move(Phase.DRAINING)
        if announce:
            sdnotify.stopping()
        return True

    def finish(self) -> None:
        """The daemon's tasks are over (drained, cut or cancelled)."""
        if self.phase is not Phase.STOPPED:
            self._move(Phase.STOPPED)
        self.stopped.set()


async def graceful(
    deadline: float, idle: Callable[[], Awaitable[object]], cut: Callable[[], object]
) -> bool:
    """Wait for ``idle()`` until ``deadline``; if it has not returned by then, call
    ``cut()`` to cancel what is left. True when the work ended in time."""
    with trio.move_on_at(deadline):
        await idle()
        return True
    cut()
    return False


async def wait_until(done: Callable[[], bool], changed: Callable[[], trio.Event]) -> None:
    """Return once ``done()``; re-checked each time the event ``changed()`` returns
    (the current one) is set. Never polls."""
    while not done():
        await changed().wait()


class Changed:
    """An event that fires at each change of something counted, for waiters on a
    condition. Created only while someone waits: a change nobody waits for costs a
    test of None."""

    def __init__(self) -> None:
        self._event: trio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    def event(self) -> trio.Event:
        if self._event is None:
            self._event = trio.Event()
        return self._event

    async def wait_until(self, done: Callable[[], bool]) -> None:
        await wait_until(done, self.event)


async def watchdog() -> None:
    """``WATCHDOG=1`` at half of ``$WATCHDOG_USEC``; returns at once without one."""
    interval = sdnotify.watchdog_interval()
    if not interval:  # none configured (or 0: no busy loop)
        return
    while True:
        sdnotify.watchdog()
        await trio.sleep(interval)
