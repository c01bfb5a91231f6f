"""Idle parking for pumps on the fd fast path.

A live pump runs its two directions as two trio tasks in a nursery; with
thousands of idle consoles that is most of the relay's memory (two coroutine
stacks, a task, a nursery, trio's per-fd waiters). A pump whose directions have
all sat in their read wait, with no byte moved, for a whole sweep interval is
*parked*: its directions return, the nursery closes, and the pump's one
remaining task waits here for any of its source fds to become readable (or to
report EOF / an error). Then the pump starts its directions again.

One Parker per trio run: a private epoll set holds the source fds of parked
pumps (level-triggered; a fd is removed as soon as its pump wakes), and a
system task sweeps the running pumps once per interval.

Only pumps whose every live direction is on the fd fast path park: nothing is
buffered in user space there (no pipe, no buffer, no TLS state) while a
direction waits to read, so a parked pump holds just its two streams.

Inline forwarding (``INLINE``, real clock only): the epoll set is served by one
reactor thread instead of a trio task. A parked pump's interactive traffic (a
read under ``INLINE_CHUNK`` that the destination takes whole, without
blocking) is forwarded by that thread directly: read, write, count, no trio
task switch, no epoll re-arm. Waking each trio task per message costs ~20 us
of CPU per hop (that is trio's scheduling round, not the pump's own code); a
plain epoll loop is what socat does. Anything else -- a full read (bulk), a
write that would block or is partial, EOF, an error -- hands the pump back to
its trio task with what was read and not yet written. A pump that keeps
forwarding small messages parks at once (relay.pump), not after a sweep
interval, so a chatty console is relayed by the reactor.
Under a trio.testing.MockClock (tests with an autojump clock) the parker uses a
trio task and never forwards inline: a thread's wake-ups are invisible to the
autojump logic.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import threading
from collections.abc import Collection
from typing import Protocol

import outcome
import trio
import trio.testing

from relay.park_forward import INLINE_CHUNK, NO_DST, Handoff, Route, find_route, forward

# A pump parks once a whole sweep interval went by without a byte moved (so
# after PARK_AFTER to 2 * PARK_AFTER of silence). Waking costs a nursery and a
# task (tens of microseconds), nothing next to the seconds between keystrokes
# or log lines of an interactive console.
PARK_AFTER = 0.25
CHECK_PARKED_EVERY = 5  # sweeps between checks that parked fds are still open
_EVENTS = select.EPOLLIN | select.EPOLLRDHUP
INLINE = True  # parked pumps' small messages are forwarded by the reactor thread
_READY: list[Handoff] = [(-1, "ready", b"", None)]

# entry states (reactor mode)
_PARKED, _WAKING, _GONE = 0, 1, 2

log = logging.getLogger(__name__)


class Parkable(Protocol):
    """What the Parker needs of a running pump (relay.pump_session.Session)."""

    busy: bool  # a byte moved since the last sweep
    reading: int  # directions blocked in their read wait
    live: int  # directions not yet finished

    def park_now(self) -> None: ...

    def parked_fds_valid(self) -> bool: ...

    def moved_inline(self, direction: int, n: int) -> None:
        """Bytes forwarded by the reactor thread (called in that thread)."""

    def routes(self) -> tuple[Route, ...]:
        """The live directions (called in the reactor thread, while parked)."""
        ...


class _Parked:
    __slots__ = ("fds", "handoff", "parker", "routes", "session", "state", "task", "woken")

    def __init__(
        self,
        parker: Parker,
        fds: tuple[int, ...],
        session: Parkable,
        task: trio.lowlevel.Task,
    ) -> None:
        self.parker = parker
        self.fds = fds
        self.session = session
        self.task = task
        self.woken = False
        # reactor mode: the session's routes, asked for at the first message
        # (an idle parked pump never pays for them)
        self.routes: tuple[Route, ...] | None = None
        self.state = _PARKED
        self.handoff: list[Handoff] = _READY

    def abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        """Cancelled while parked (idle timeout, drain): stop watching the fds.

        Unless the reactor has already handed the pump back (bytes it read and
        did not write, an EOF, an error) and the wake-up is on its way to the
        trio thread: then the wait cannot be aborted. The task wakes with the
        hand-off, its bytes are delivered, and the cancel takes effect at the
        pump's next checkpoint."""
        with self.parker._mu:
            if self.state == _WAKING:
                return trio.lowlevel.Abort.FAILED
            self.woken = True
            self.state = _GONE
            self.parker._forget(self, self.fds)
        return trio.lowlevel.Abort.SUCCEEDED


class Parker:
    def __init__(self, interval: float = PARK_AFTER, *, inline: bool = False) -> None:
        self.interval = interval
        self.inline = inline  # reactor thread + inline forwarding
        self.running: set[Parkable] = set()
        self._parked: dict[int, _Parked] = {}
        self._ep = select.epoll()
        self._forever: trio.CancelScope | None = None
        self._sweeps = 0
        # reactor mode: the thread, its stop pipe, the lock that orders the
        # thread's forwarding against parking, aborts and hand-offs
        self._mu = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_r = self._stop_w = -1
        self._token: trio.lowlevel.TrioToken | None = None
        self.forwarded = 0  # messages forwarded inline (for tests and stats)

    @property
    def parked(self) -> int:
        """Pumps parked now."""
        # (a snapshot in one C call: the reactor thread may change the dict)
        return len({id(e) for e in list(self._parked.values())})

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

    async def park(
        self,
        session: Parkable,
        fds: tuple[int, ...],
    ) -> list[Handoff] | None:
        """Wait until one of ``fds`` is readable (or hung up). None: these fds
        cannot be watched (the caller just runs its directions again).

        In reactor mode the live directions' small messages (see
        Parkable.routes) are forwarded inline meanwhile. Returns why
        the pump woke (see Handoff): bytes read and not written are the
        caller's to deliver first.
        """
        entry = _Parked(self, fds, session, trio.lowlevel.current_task())
        done: list[int] = []
        with self._mu:
            try:
                for fd in fds:
                    self._ep.register(fd, _EVENTS)
                    done.append(fd)
                    self._parked[fd] = entry
            except OSError:
                self._forget(entry, done)
                return None
        if self.inline:
            self._start_thread()
        self._kick()
        result: list[Handoff] = await trio.lowlevel.wait_task_rescheduled(entry.abort)
        return result

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
        trio.lowlevel.reschedule(entry.task, outcome.Value(_READY))

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
            entries = list(self._parked.values())
            self.wake({e.session for e in entries if not e.session.parked_fds_valid()})

    def wake(self, sessions: Collection[Parkable]) -> None:
        """In the trio thread: wake these parked pumps now (relay.pump_freeze)."""
        for entry in [e for e in list(self._parked.values()) if e.session in sessions]:
            if not self.inline:
                self._wake(entry)
                continue
            with self._mu:
                if entry.state != _PARKED:
                    continue
                entry.state = _WAKING
                self._forget(entry, entry.fds)
            self._wake_in_trio(entry)

    # --- reactor mode ---------------------------------------------------------------

    def _start_thread(self) -> None:
        if self._thread is not None:
            return
        self._token = trio.lowlevel.current_trio_token()
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ep.register(self._stop_r, select.EPOLLIN)
        self._thread = threading.Thread(
            target=self._reactor, name="relay.park.reactor", daemon=True
        )
        self._thread.start()

    def _stop_thread(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        thread.join(5.0)
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1

    def _wake_in_trio(self, entry: _Parked) -> None:
        """In the trio thread: give a parked pump back its task (unless it was
        cancelled meanwhile)."""
        if entry.state != _WAKING:
            return
        entry.state = _GONE
        entry.woken = True
        trio.lowlevel.reschedule(entry.task, outcome.Value(entry.handoff))

    def _hand_off(self, entry: _Parked, handoff: list[Handoff]) -> None:
        """In the reactor thread, holding _mu: stop watching, wake the pump."""
        entry.state = _WAKING
        entry.handoff = handoff
        self._forget(entry, entry.fds)
        assert self._token is not None
        try:
            self._token.run_sync_soon(self._wake_in_trio, entry)
        except trio.RunFinishedError:
            pass

    def _reactor(self) -> None:
        ep = self._ep
        stop = self._stop_r
        parked = self._parked
        mu = self._mu
        while True:
            try:
                events = ep.poll()
            except InterruptedError:
                continue
            except (OSError, ValueError):  # closed under us at the end of the run
                return
            for fd, _ev in events:
                if fd == stop:
                    return
                with mu:
                    entry = parked.get(fd)
                    if entry is None:  # stale: not ours any more
                        with contextlib.suppress(OSError, ValueError):
                            ep.unregister(fd)
                        continue
                    if entry.state != _PARKED:
                        continue
                    try:
                        self._forward(entry, fd)
                    except Exception:  # a bug must not stop the reactor: wake the pump
                        log.exception("parker reactor: unexpected error; waking the pump")
                        if entry.state == _PARKED:
                            self._hand_off(entry, _READY)

    def _forward(self, entry: _Parked, fd: int) -> None:
        """Holding _mu, in the reactor thread: move one small message from
        ``fd`` to its destination, or hand the pump back."""
        routes = entry.routes
        if routes is None:
            routes = entry.routes = entry.session.routes()
        route = find_route(routes, fd)
        if route is None:
            self._hand_off(entry, _READY)
            return
        n, handoff = forward(fd, route)
        if n:
            entry.session.moved_inline(route[2], n)
            self.forwarded += 1
        if handoff is not None:
            self._hand_off(entry, handoff)

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
                    if self.inline:  # the reactor thread watches the fds
                        await trio.sleep_forever()
                    else:
                        await trio.lowlevel.wait_readable(epfd)
                self._forever = None
                now = trio.current_time()
                if deadline == math.inf:  # woken from a sleep with nothing to sweep
                    next_sweep = now + self.interval
                try:
                    if not scope.cancelled_caught and not self.inline:
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
            self._stop_thread()
            self._parked.clear()
            ep.close()


_PARKER: trio.lowlevel.RunVar[Parker] = trio.lowlevel.RunVar("relay_parker")


def current_parker() -> Parker:
    """The Parker of this trio run (started on first use)."""
    try:
        return _PARKER.get()
    except LookupError:
        clock = trio.lowlevel.current_clock()
        parker = Parker(inline=INLINE and not isinstance(clock, trio.testing.MockClock))
        _PARKER.set(parker)
        trio.lowlevel.spawn_system_task(parker.run, name="relay.park.Parker")
        return parker


__all__ = [
    "INLINE",
    "INLINE_CHUNK",
    "NO_DST",
    "PARK_AFTER",
    "Handoff",
    "Parkable",
    "Parker",
    "Route",
    "current_parker",
]
