"""The shapes the session API takes for a process's standard streams.

* input (``stdin``): a ``trio.abc.ReceiveStream`` (read until it ends) or any
  async iterable of ``bytes`` (until it stops); None: no input (EOF at once);
* output (``stdout``, ``stderr``): a ``trio.abc.SendStream`` (``send_all``) or an
  async callback ``f(data)``; None: the bytes are dropped. A slow consumer slows
  the process (the session holds at most its replay limit), never the appliance;
* ``resize``: an async iterable of ``(rows, cols)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

import trio

Source = trio.abc.ReceiveStream | AsyncIterable[bytes]
Sink = trio.abc.SendStream | Callable[[bytes], Awaitable[None]]
Sizes = AsyncIterable[tuple[int, int]]

READ_SIZE = 32 * 1024


async def chunks(source: Source) -> AsyncIterator[bytes]:
    """The bytes of ``source``, a chunk at a time; empty chunks are skipped."""
    if isinstance(source, trio.abc.ReceiveStream):
        while True:
            data = await source.receive_some(READ_SIZE)
            if not data:
                return
            yield bytes(data)
    else:
        async for data in source:
            if data:
                yield bytes(data)


def writer(sink: Sink | None) -> Callable[[bytes], Awaitable[None]]:
    """One async ``write(data)`` for any sink."""
    if sink is None:

        async def drop(data: bytes) -> None:
            return None

        return drop
    if isinstance(sink, trio.abc.SendStream):
        return sink.send_all
    return sink
