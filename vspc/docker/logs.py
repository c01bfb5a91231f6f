"""``docker logs --until T`` on the Docker endpoint, over the container log store.

``logs_until(store, vm, q, shape, clock)`` gives the bytes of the lines logged at
or before ``q.until`` (and after ``q.since``): the store's lines are in time
order, so the first one past ``until`` ends the answer. With ``--tail N`` the
last N of those lines (held in a deque of N: memory bounded by the tail asked
for). With ``-f`` following ends at the first line past ``until`` or once the
clock passes it, whichever comes first, as docker's own daemon does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, Callable

from vspc.containerlogs.shapes import Shape, shaped
from vspc.containerlogs.store import ContainerLogs
from vspc.core.docker_params import LogsQuery
from vspc.core.linelog import LogLine, Stream


def _streams(q: LogsQuery) -> frozenset[Stream]:
    return frozenset(s for s, on in ((Stream.STDOUT, q.stdout), (Stream.STDERR, q.stderr)) if on)


async def logs_until(
    store: ContainerLogs,
    vm: str,
    q: LogsQuery,
    shape: Shape,
    now: float,
) -> AsyncGenerator[bytes, None]:
    """See the module doc (``q.until`` is set; the caller bounds a follow with
    ``follow_seconds``: a cancel scope cannot live across this generator's yields)."""
    assert q.until is not None
    until_ns = int(q.until * 1e9)
    follow = q.follow and q.tail is None and q.until > now  # a past until: the history only
    kept: deque[LogLine] = deque(maxlen=q.tail if q.tail is not None else None)
    async with store.lines(vm, since=q.since, streams=_streams(q), follow=follow) as lines:
        async for line in lines:
            if line.ns > until_ns:
                break
            if q.tail is None:
                yield shaped(line, shape, q.timestamps)
            elif q.tail > 0:
                kept.append(line)
    for line in kept:
        yield shaped(line, shape, q.timestamps)


def follow_seconds(q: LogsQuery, clock: Callable[[], float]) -> float:
    """How long a ``logs -f`` may follow: until ``q.until`` on ``clock``, else forever."""
    if q.until is None or not q.follow or q.until <= clock():
        return float("inf")  # no follow, or none past the history (``logs_until``)
    return max(0.0, q.until - clock())
