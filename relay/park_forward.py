"""Inline forwarding (relay.park): the reactor thread moves one small message of a
parked pump from its source fd to its destination fd, or says why the pump's
own task must take over (a hand-off)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

# A read this size or larger means bulk: the pump's own task splices it.
INLINE_CHUNK = 64 << 10
NO_DST = -1  # a route whose messages are never forwarded inline

# What park() returns: why the pump woke. (direction, kind, data, error):
#   (d, "data", leftover, None)  bytes read from direction d's source, not yet written
#   (d, "eof", b"", None)        direction d's source reached EOF (nothing pending)
#   (d, "error", b"", exc)       reading or writing direction d failed
#   (-1, "ready", b"", None)     a source is readable: nothing was read
Handoff = tuple[int, str, bytes, OSError | None]
# A direction to forward inline: (source fd, destination fd, direction, and two
# callables returning the fds its streams own now). The reactor checks both
# before each message, so a stream closed (and its fd number reused) while
# parked is never read or written by a stale number.
Route = tuple[int, int, int, Callable[[], int], Callable[[], int]]


def find_route(routes: tuple[Route, ...], fd: int) -> Route | None:
    """The route reading ``fd`` if its message may be forwarded inline now (it
    has a destination, and its streams still own both fds); else None."""
    for route in routes:
        if route[0] == fd:
            break
    else:
        return None
    if route[1] == NO_DST or route[3]() != fd or route[4]() != route[1]:
        return None
    return route


def forward(fd: int, route: Route) -> tuple[int, list[Handoff] | None]:
    """Read one message from ``fd`` and write it to ``route``'s destination:
    (bytes written, None when that is all, else the hand-off that gives the pump
    back to its task). (0, None): a spurious wake-up, nothing to read."""
    dst, d = route[1], route[2]
    try:
        data = os.read(fd, INLINE_CHUNK)
    except BlockingIOError:
        return 0, None  # spurious: level-triggered, it comes back if it is real
    except OSError as exc:
        if exc.errno == errno.EIO:  # pty master after the slave closed
            return 0, [(d, "eof", b"", None)]
        return 0, [(d, "error", b"", exc)]
    if not data:
        return 0, [(d, "eof", b"", None)]
    if len(data) >= INLINE_CHUNK:  # bulk: the pump's task splices the rest
        return 0, [(d, "data", data, None)]
    try:
        n = os.write(dst, data)
    except BlockingIOError:
        n = 0
    except OSError as exc:
        return 0, [(d, "error", b"", exc)]
    if n < len(data):  # the destination is full: the pump's task waits for it
        return n, [(d, "data", data[n:], None)]
    return n, None
