"""What a successor's own connect-mode pipe ingress waits for after a handoff.

A ``[[pipe]]`` listener with ``mode = "connect"`` keeps one connection to the
VM end's socket (relay.ingress.pipe), which serves one client at a time (QEMU's
and ESX's pipe servers): a second connection waits in its backlog. A successor
that connected at start-up while the predecessor's stream on that socket moves
over (relay.pump_handoff) would hold such a waiting connection, and the
appliance, which gives a console's input to its newest VM connection, would
type into it. So the loop for that path waits (``wait_clear``) before it
connects: while this process takes over (``taking_over`` to ``settled``: until
the predecessor released its streams or the takeover failed), until the
predecessor exited (a stream that could not move, a TLS egress say, stays
there until its drain ends), and while a stream it was passed from that VM end
lives (``hold``).

State is per trio run (a RunVar): one relay per run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from common.ops.lifecycle import Changed


@dataclass
class _Holds:
    settled: trio.Event = field(default_factory=trio.Event)
    predecessor: int | None = None  # its pid
    held: dict[str, int] = field(default_factory=dict)  # VM-end path -> moved streams live
    changed: Changed = field(default_factory=Changed)


POLL = 0.1  # seconds, for a predecessor's exit without a pidfd
_HOLDS: trio.lowlevel.RunVar[_Holds] = trio.lowlevel.RunVar("relay_handoff_holds")


def _holds() -> _Holds:
    try:
        return _HOLDS.get()
    except LookupError:
        h = _Holds()
        h.settled.set()  # (no takeover under way)
        _HOLDS.set(h)
        return h


def taking_over(pid: int) -> None:
    """The predecessor is about to pass its live streams (until ``settled``)."""
    h = _holds()
    h.settled = trio.Event()
    h.predecessor = pid


def settled() -> None:
    """It passed them all, or the takeover failed."""
    _holds().settled.set()


def hold(path: str) -> Callable[[], None]:
    """A stream passed from the VM end at ``path`` lives until the call returned
    is called (taken synchronously where the stream is adopted)."""
    h = _holds()
    h.held[path] = h.held.get(path, 0) + 1
    done = False

    def release() -> None:
        nonlocal done
        if done:
            return
        done = True
        h.held[path] -= 1
        if not h.held[path]:
            del h.held[path]
        h.changed.notify()

    return release


async def wait_clear(path: str) -> None:
    """Until no takeover is under way and no passed stream from ``path`` lives."""
    h = _holds()
    await h.settled.wait()
    if h.predecessor is not None:
        await _gone(h.predecessor)
    await h.changed.wait_until(lambda: path not in h.held)


async def _gone(pid: int) -> None:
    """Until process ``pid`` exited (a pidfd turns readable; polled without one)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # (no pidfd: an old kernel)
        while _alive(pid):  # noqa: ASYNC110 (another process: nothing to wait on)
            await trio.sleep(POLL)
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
