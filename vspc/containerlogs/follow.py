"""A reader of one VM's container log: what was logged, then (following) the
lines as they are appended.

What was logged comes first, a page at a time from the files (``prime``), then
the lines that were still queued. Following, the store pushes each appended
line to every follower of the VM (``push``) and wakes it; nothing polls. A
follower holds at most ``max_bytes`` of lines not yet taken: a reader that
falls further behind loses the oldest of them and is told so
(``FollowLagged``, naming how many), rather than holding memory or slowing
the container. The follow ends, once what is held is taken, when the VM's
output ends (``end``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import trio

from vspc.core.linelog import LogLine, Stream

Pages = Callable[[], Awaitable[list[LogLine]]]


class FollowLagged(Exception):
    """The reader fell behind by more than the follower holds: ``skipped`` lines lost."""

    def __init__(self, skipped: int) -> None:
        super().__init__(f"follow fell behind: {skipped} lines skipped")
        self.skipped = skipped


class Follower:
    """Async iterator of ``LogLine``; see the module doc."""

    __slots__ = (
        "_first",
        "_held",
        "_lines",
        "_source",
        "_then",
        "_wake",
        "ended",
        "max_bytes",
        "skipped",
        "streams",
    )

    def __init__(self, streams: frozenset[Stream], max_bytes: int) -> None:
        self.streams = streams
        self.max_bytes = max_bytes
        self._first: deque[LogLine] = deque()  # a page of what was logged before
        self._source: Pages | None = None  # more of what was logged before
        self._then: list[LogLine] = []  # ... and after it, what was still queued
        self._lines: deque[LogLine] = deque()
        self._held = 0
        self._wake = trio.Event()
        self.ended = False
        self.skipped = 0  # lines lost to lag, not yet reported

    @property
    def held(self) -> int:
        return self._held

    def prime(self, source: Pages | None, then: Iterable[LogLine] = ()) -> None:
        """What was logged before the follow began, given before any line pushed:
        pages from ``source`` until it gives [], then ``then``."""
        self._source = source
        self._then = list(then)
        if source is None:
            self._first.extend(self._then)
            self._then = []

    def push(self, lines: Iterable[LogLine]) -> None:
        for line in lines:
            if line.stream not in self.streams:
                continue
            self._lines.append(line)
            self._held += len(line.text) + 64
        while self._held > self.max_bytes and self._lines:
            old = self._lines.popleft()
            self._held -= len(old.text) + 64
            self.skipped += 1
        self._wake.set()

    def end(self) -> None:
        self.ended = True
        self._wake.set()

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> LogLine:
        while True:
            if self._first:
                return self._first.popleft()
            if self._source is not None:
                page = await self._source()
                if not page:
                    self._source, page, self._then = None, self._then, []
                self._first.extend(page)
                continue
            if self.skipped:
                n, self.skipped = self.skipped, 0
                raise FollowLagged(n)
            if self._lines:
                line = self._lines.popleft()
                self._held -= len(line.text) + 64
                return line
            if self.ended:
                raise StopAsyncIteration
            self._wake = trio.Event()
            await self._wake.wait()
