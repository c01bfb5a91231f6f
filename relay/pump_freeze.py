"""Stopping a running pump at a safe point, so its sockets can move to another process.

A pump on the fd fast path holds nothing in user space while every live
direction waits to read: a splice burst returns only with its pipe empty, a
partial direct write is finished before the wait (common.io.splice). That is
the point relay.park stops a pump at to park it, and the one a freeze stops it
at: ``Freeze.ask()`` marks the pump; ``poke()`` (called by the mover, over and
over, until the pump stopped or a deadline passed) stops its directions once
they all wait to read; a parked pump is woken first (relay.park.Parker.wake:
the parker hands over what it read and did not write; the pump delivers it). A stopped pump
waits in ``hold()`` for the verdict: moved (its task returns, leaving both
streams open for the caller to close after their fds were sent) or not (it
runs on, as if nothing happened).

Only a pump with both directions live on the fast path can stop: a copy
direction (TLS, in-memory streams) may hold bytes in a buffer or in the TLS
object's state, which cannot be exported. (A copy-path pump whose egress is a
peer route or TLS stops by other means: relay.pump_peer, relay.pump_tls.)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from relay.pump_state import Mode

if TYPE_CHECKING:
    from relay.pump_session import Session


class Freeze:
    # (no Event until one is waited on: every pumped stream has a Freeze)
    __slots__ = ("_verdict", "asked", "decided", "frozen", "moved", "session", "stopped")

    def __init__(self) -> None:
        self.asked = False
        self.session: Session | None = None  # set by the pump when it starts
        self.stopped = False  # the pump stopped at a safe point, or ended
        self.frozen = False  # stopped at a safe point, both streams open
        self.decided = False
        self.moved = False
        self._verdict: trio.Event | None = None

    def ask(self) -> None:
        self.asked = True
        self.poke()

    def poke(self) -> None:
        """Stop the pump if it is at a safe point now."""
        s = self.session
        if s is None or self.stopped or not self.asked:
            return
        if s.parked_on is not None:
            return  # the mover wakes the parked ones, all in one call
        if not stoppable(s):
            return
        if s.scope is not None and s.live == 2 and s.reading == s.live:
            s.park_now()  # every direction waits to read: nothing in flight

    def can_stop(self) -> bool:
        """Called by the pump after its directions returned: it stopped at a safe point."""
        s = self.session
        return (
            self.asked
            and not self.decided
            and s is not None
            and s.parking
            and s.failure is None
            and s.live == 2
            and stoppable(s)
        )

    async def hold(self) -> bool:
        """The pump is stopped: wait for the verdict (True: its sockets moved)."""
        s = self.session
        scope = s.idle_scope if s is not None else None
        if scope is not None:  # no idle timeout while held
            scope.deadline = math.inf
        self.frozen = self.stopped = True
        try:
            if not self.decided:
                self._verdict = trio.Event()
                await self._verdict.wait()
        finally:
            self.frozen = False
            if s is not None and scope is not None:
                scope.deadline = trio.current_time() + s.idle_timeout_s
        return self.moved

    def decide(self, moved: bool) -> None:
        self.moved = moved
        self.decided = True
        if self._verdict is not None:
            self._verdict.set()

    def ended(self) -> None:
        """The pump returned (or raised); nothing more to stop."""
        self.stopped = True


def stoppable(s: Session) -> bool:
    return all(d.mode == Mode.FAST for d in s.dirs)
