"""The pump: full-duplex byte mover between two trio Streams.

* Each direction runs independently. EOF on one read side is propagated as
  ``send_eof()`` on the other stream when it is a HalfCloseableStream; when it
  is not, that stream is closed once both directions are done.
* Zero-copy fast path: when the source has a raw read fd and the destination a
  raw write fd (SocketStream over TCP/Unix/vsock, FdStream, StapledStream of
  those), bulk bytes go fd -> pipe -> fd with os.splice, and small interactive
  bursts by a direct read/write of the fds (see common.io.splice). Anything else
  (TLS, in-memory streams) goes through a copy loop with large buffers taken
  from a shared pool only while data flows. A direction that keeps moving bulk
  (relay.pump_bulk.THREAD_AFTER) runs its splice bursts in a worker thread:
  blocking-style splice loops with the GIL released, trio kept for control.
* Idle parking (relay.park): a pump on the fd fast path with no byte moved for
  a sweep interval (0.25-0.5 s) stops its directions at their read wait and
  parks its source fds in one shared epoll set; only the caller's task remains
  (no second task, no nursery, no pipe or buffer) until a fd is readable.
  With a real clock the parker's reactor thread forwards a parked pump's small
  messages itself (no trio task switch per message), and a pump that forwards
  PARK_STREAK small messages in a row while its other direction waits parks at
  once: interactive traffic is relayed by the reactor, bulk by the pump's task.
* Timeouts: ``idle_timeout`` (no byte moved in either direction) and
  ``stall_timeout`` (one write blocked that long) raise IdleTimeout /
  StallTimeout, both PumpTimeout (a TimeoutError), after closing both streams.
* A reset or closed peer on either side ends the whole pump quietly (both
  streams closed, ``counters.end_reason`` says why); pump returns normally.
* pump() always closes both streams before it returns or raises.

The pieces: relay.pump_state (counters, the two directions, how a pump ends),
relay.pump_session (a running pump and what relay.park asks of it),
relay.pump_copy (the userspace copy loops); this module runs the pump.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import trio

from common.io.pipepool import PipePool, default_pool
from relay.park import Handoff, Parker, current_parker
from relay.pump_freeze import Freeze
from relay.pump_session import BROKEN, PARK_STREAK, Session
from relay.pump_state import A_TO_B, B_TO_A, IdleTimeout, PumpCounters, PumpTimeout, StallTimeout

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0  # bound on a graceful close (e.g. a TLS close_notify)
_NO_SCOPE = contextlib.nullcontext()  # stateless: one for every pump without an idle timeout


async def _close(stream: trio.abc.Stream, graceful: bool) -> None:
    if not graceful:
        await trio.aclose_forcefully(stream)
        return
    with trio.move_on_after(CLOSE_TIMEOUT):  # aclose closes even when cancelled
        try:
            await stream.aclose()
        except BROKEN:
            pass


async def _park_with_idle_timeout(
    session: Session, parker: Parker, fds: tuple[int, ...]
) -> list[Handoff] | None:
    """Park (inline parker) with an idle timeout. None: the fds cannot be
    watched, or (failure set) the idle timeout passed while parked.

    Inline forwarding moves bytes while the task sleeps, and the reactor thread
    cannot touch a trio deadline: the wait has its own deadline, re-armed from
    the time of the last inline forward when it passes."""
    scope = session.idle_scope
    assert scope is not None
    deadline = scope.deadline
    scope.deadline = math.inf
    session.inline_moved_at = 0.0
    idle = session.idle_timeout_s
    try:
        while True:
            with trio.CancelScope(deadline=deadline) as wait:
                handoff = await parker.park(session, fds)
            if not wait.cancelled_caught:
                return handoff
            if session.inline_moved_at:
                left = idle - (time.monotonic() - session.inline_moved_at)
                if left > 0:
                    deadline = trio.current_time() + left
                    continue
            session.failure = IdleTimeout(f"idle for {session.idle_timeout}s")
            return None
    finally:
        # Woken by a source (or cancelled): the idle clock restarts now.
        scope.deadline = trio.current_time() + idle


def _session(
    a: trio.abc.Stream,
    b: trio.abc.Stream,
    counters: PumpCounters,
    idle_timeout: float | None,
    stall_timeout: float | None,
    pipes: PipePool | None,
    splice: bool,
    park: bool,
    freeze: Freeze | None,
) -> Session:
    session = Session(
        a,
        b,
        counters,
        idle_timeout,
        stall_timeout,
        pipes if pipes is not None else default_pool(),
        splice,
    )
    # Idle timeout: a deadline pushed forward whenever bytes move (no watchdog
    # task). One direction runs in this task, the other in one child task; an
    # idle pump parks (one task, no pipe or buffer).
    if idle_timeout is not None:
        session.idle_scope = trio.CancelScope(deadline=trio.current_time() + idle_timeout)
    session.parker = current_parker() if splice and park else None
    session.quick_park = session.parker is not None and session.parker.inline
    if freeze is not None:  # (relay.pump_freeze)
        freeze.session = session
        session.bulk_hold = lambda: freeze.asked and not freeze.decided
    return session


def _failure(session: Session, idle_timeout: float | None) -> BaseException | None:
    if (
        session.idle_scope is not None
        and session.idle_scope.cancelled_caught
        and session.failure is None
    ):
        session.failure = IdleTimeout(f"idle for {idle_timeout}s")
    return session.failure


async def _finish(
    a: trio.abc.Stream, b: trio.abc.Stream, graceful: bool, moved: bool, freeze: Freeze | None
) -> None:
    """Close both streams (not when they moved to another process)."""
    if freeze is not None:
        freeze.ended()
    if not moved:
        try:
            await _close(a, graceful)
        finally:
            await _close(b, graceful)


def _ended(counters: PumpCounters, failure: BaseException | None) -> None:
    """Record why the pump ended; raise a timeout (both streams are closed)."""
    if failure is None:
        counters.end_reason = "eof"
        return
    counters.end_reason = str(failure) if not isinstance(failure, IdleTimeout) else "idle timeout"
    if isinstance(failure, PumpTimeout):
        raise failure
    log.debug("pump ended: %s", failure)


async def pump(
    a: trio.abc.Stream,
    b: trio.abc.Stream,
    *,
    counters: PumpCounters | None = None,
    idle_timeout: float | None = None,
    stall_timeout: float | None = None,
    pipes: PipePool | None = None,
    splice: bool = True,
    park: bool = True,
    freeze: Freeze | None = None,
) -> None:
    """Move bytes both ways between *a* and *b* until both directions end.

    ``splice=False`` forces the copy path (for comparison and tests). ``park``: a
    pump on the fd fast path idle for a sweep interval (relay.park.PARK_AFTER)
    parks: one task waiting for a source fd, no second task, no nursery.
    Raises IdleTimeout / StallTimeout (PumpTimeout) on a timeout; returns on EOF
    both ways or on a reset peer. Closes both streams, unless ``freeze`` stopped
    it and its sockets moved to another process (``end_reason`` "moved").
    """
    c = counters if counters is not None else PumpCounters()
    session = _session(a, b, c, idle_timeout, stall_timeout, pipes, splice, park, freeze)
    graceful = moved = False
    try:
        with session.idle_scope or _NO_SCOPE:
            while True:
                await session.run_directions()
                if freeze is not None and freeze.can_stop():
                    if moved := await freeze.hold():
                        break
                    continue
                parker = session.parker
                if not session.parking or session.failure is not None or not session.live:
                    break
                if parker is None:  # stopped for a freeze that was called off
                    continue
                # Parked: no task but this one, no nursery, until a source fd
                # is readable (data, EOF or an error); then the directions again.
                fds = session.read_fds()
                session.parked_on = fds
                session.small_streak = 0
                if fds is None:
                    handoff = None
                elif session.idle_scope is None or not parker.inline:
                    # (awaited here, not through a helper: an idle parked
                    # pump keeps no extra coroutine frame)
                    handoff = await parker.park(session, fds)
                else:
                    handoff = await _park_with_idle_timeout(session, parker, fds)
                if not await session.unpark(handoff):
                    break
        failure = _failure(session, idle_timeout)
        graceful = failure is None
    finally:
        await _finish(a, b, graceful, moved, freeze)
    if moved:
        c.end_reason = "moved"
        return
    _ended(c, failure)


__all__ = [
    "A_TO_B",
    "B_TO_A",
    "PARK_STREAK",
    "IdleTimeout",
    "PipePool",
    "PumpCounters",
    "PumpTimeout",
    "StallTimeout",
    "pump",
]
