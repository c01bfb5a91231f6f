"""Idle parking for pumps on the fd fast path.

A live pump runs its two directions as two trio tasks in a nursery; with
thousands of idle consoles that is most of the relay's memory (two coroutine
stacks, a task, a nursery, trio's per-fd waiters). A pump whose directions have
all sat in their read wait, with no byte moved, for a whole sweep interval is
*parked*: its directions return, the nursery closes, and the pump's one
remaining task waits here for any of its source fds to become readable (or to
report EOF / an error). Then the pump starts its directions again.

One Parker per trio run (a system task): a private epoll set holds the source
fds of parked pumps (level-triggered; a fd is removed as soon as its pump
wakes), and the same task sweeps the running pumps once per interval.

Only pumps whose every live direction is on the fd fast path park: nothing is
buffered in user space there (no pipe, no buffer, no TLS state) while a
direction waits to read, so a parked pump holds just its two streams.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
from typing import Protocol

import trio

# A pump parks once a whole sweep interval went by without a byte moved (so
# after PARK_AFTER to 2 * PARK_AFTER of silence). Waking costs a nursery and a
# task (tens of microseconds), nothing next to the seconds between keystrokes
# or log lines of an interactive console.
PARK_AFTER = 0.25
CHECK_PARKED_EVERY = 5  # sweeps between checks that parked fds are still open
_EVENTS = select.EPOLLIN | select.EPOLLRDHUP

log = logging.getLogger(__name__)


class Parkable(Protocol):
    """What the Parker needs of a running pump (relay.pump._Session)."""

    busy: bool  # a byte moved since the last sweep
    reading: int  # directions blocked in their read wait
    live: int  # directions not yet finished

    def park_now(self) -> None: ...

    def parked_fds_valid(self) -> bool: ...


class _Parked:
    __slots__ = ("fds", "parker", "session", "task", "woken")

    def __init__(
        self, parker: Parker, fds: tuple[int, ...], session: Parkable, task: trio.lowlevel.Task
    ) -> None:
        self.parker = parker
        self.fds = fds
        self.session = session
        self.task = task
        self.woken = False

    def abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        """Cancelled while parked (idle timeout, drain): stop watching the fds."""
        self.woken = True
        self.parker._forget(self, self.fds)
        return trio.lowlevel.Abort.SUCCEEDED


class Parker:
    def __init__(self, interval: float = PARK_AFTER) -> None:
        self.interval = interval
        self.running: set[Parkable] = set()
        self._parked: dict[int, _Parked] = {}
        self._ep = select.epoll()
        self._forever: trio.CancelScope | None = None
        self._sweeps = 0

    @property
    def parked(self) -> int:
        """Pumps parked now."""
        return len({id(e) for e in self._parked.values()})

    # --- pump side ---------------------------------------------------------------

    def add(self, session: Parkable) -> None:
        """A pump's directions started: sweep it from now on."""
        self.running.add(session)
        self._kick()

    def _kick(self) -> None:
        if self._forever is not None:  # the loop sleeps with no deadline: give it one
            self._forever.cancel()

    def remove(self, session: Parkable) -> None:
        self.running.discard(session)

    async def park(self, session: Parkable, fds: tuple[int, ...]) -> bool:
        """Wait until one of ``fds`` is readable (or hung up). False: these fds
        cannot be watched (the caller just runs its directions again)."""
        entry = _Parked(self, fds, session, trio.lowlevel.current_task())
        done: list[int] = []
        try:
            for fd in fds:
                self._ep.register(fd, _EVENTS)
                done.append(fd)
                self._parked[fd] = entry
        except OSError:
            self._forget(entry, done)
            return False
        self._kick()
        await trio.lowlevel.wait_task_rescheduled(entry.abort)
        return True

    # --- internals -----------------------------------------------------------------

    def _forget(self, entry: _Parked, fds: tuple[int, ...] | list[int]) -> None:
        for fd in fds:
            if self._parked.get(fd) is entry:
                del self._parked[fd]
                with contextlib.suppress(OSError, ValueError):
                    self._ep.unregister(fd)

    def _wake(self, entry: _Parked) -> None:
        if entry.woken:
            return
        entry.woken = True
        self._forget(entry, entry.fds)
        trio.lowlevel.reschedule(entry.task)

    def _sweep(self) -> None:
        for s in list(self.running):
            if s.busy:
                s.busy = False
            elif s.live and s.reading == s.live:
                self.running.discard(s)
                s.park_now()
        self._sweeps += 1
        if self._sweeps % CHECK_PARKED_EVERY == 0:
            # A stream closed by someone else while parked leaves no event
            # behind (the kernel drops a closed fd from the set): wake its pump.
            for entry in list(self._parked.values()):
                if not entry.woken and not entry.session.parked_fds_valid():
                    self._wake(entry)

    def _poll(self) -> None:
        for fd, _ev in self._ep.poll(0):
            entry = self._parked.get(fd)
            if entry is None:  # stale: not ours any more
                with contextlib.suppress(OSError, ValueError):
                    self._ep.unregister(fd)
                continue
            self._wake(entry)

    async def run(self) -> None:
        ep = self._ep
        epfd = ep.fileno()
        next_sweep = trio.current_time() + self.interval
        try:
            while True:
                if self.running or self._parked:
                    deadline = next_sweep
                else:
                    deadline = math.inf
                with trio.CancelScope(deadline=deadline) as scope:
                    self._forever = scope if deadline == math.inf else None
                    await trio.lowlevel.wait_readable(epfd)
                self._forever = None
                now = trio.current_time()
                if deadline == math.inf:  # woken from a sleep with nothing to sweep
                    next_sweep = now + self.interval
                try:
                    if not scope.cancelled_caught:
                        self._poll()
                    if now >= next_sweep:
                        self._sweep()
                except Exception:  # a bug here must not take the whole relay down
                    log.exception("parker: unexpected error; carrying on")
                if now >= next_sweep:
                    next_sweep = now + self.interval
        finally:
            # Only at the end of the run, when every pump task is gone.
            self._forever = None
            self._parked.clear()
            ep.close()


_PARKER: trio.lowlevel.RunVar[Parker] = trio.lowlevel.RunVar("relay_parker")


def current_parker() -> Parker:
    """The Parker of this trio run (started on first use)."""
    try:
        return _PARKER.get()
    except LookupError:
        parker = Parker()
        _PARKER.set(parker)
        trio.lowlevel.spawn_system_task(parker.run, name="relay.park.Parker")
        return parker
