"""Container logs in the shapes their readers expect: kubelet's and docker's.

``logs(store, vm, tail=, since=, follow=, timestamps=)`` is the one call under
the provider API, the CLI and the Docker endpoint; it gives the bytes to send:

* ``Shape.TEXT`` (kubelet's ``GetContainerLogs``, ``docker logs`` on a tty):
  each line's text and its newline (none for a partial record), with
  ``timestamps`` its RFC3339Nano time and a space before it;
* ``Shape.DOCKER`` (the Docker API's ``/containers/{id}/logs`` without a tty):
  the same bytes in docker's multiplexed frames, an 8-byte header (stream: 1
  stdout, 2 stderr; three zero bytes; the length, 32-bit big-endian) before each.

Use it as ``async with aclosing(logs(...)) as chunks: async for chunk in chunks``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import AsyncGenerator

from vspc.containerlogs.store import ContainerLogs
from vspc.core.linelog import STREAMS, LogLine, Stream

_DOCKER_STREAM = {Stream.STDOUT: 1, Stream.STDERR: 2}


class Shape(enum.Enum):
    TEXT = "text"
    DOCKER = "docker"


def docker_frame(line: LogLine, timestamps: bool = False) -> bytes:
    payload = line.render(timestamps)
    return struct.pack(">BxxxI", _DOCKER_STREAM[line.stream], len(payload)) + payload


def shaped(line: LogLine, shape: Shape, timestamps: bool) -> bytes:
    if shape is Shape.DOCKER:
        return docker_frame(line, timestamps)
    return line.render(timestamps)


async def logs(
    store: ContainerLogs,
    vm: str,
    *,
    tail: int | None = None,
    since: float | None = None,
    follow: bool = False,
    timestamps: bool = False,
    streams: frozenset[Stream] = STREAMS,
    shape: Shape = Shape.TEXT,
) -> AsyncGenerator[bytes, None]:
    """The VM's logs as bytes to send (see the module doc); with ``follow``, until
    its output ends. A follower that falls behind raises ``FollowLagged``."""
    async with store.lines(vm, tail=tail, since=since, streams=streams, follow=follow) as lines:
        async for line in lines:
            yield shaped(line, shape, timestamps)
