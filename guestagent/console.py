"""The console link: the container's output to the appliance, and its input back.

The link keeps one channel (serial, vsock, hybrid vsock...) connected,
reconnecting with exponential backoff when it drops. Output goes through a
bounded buffer: a writer blocks when the buffer is full (back-pressure on the
container process instead of loss), bytes leave the buffer only once
``send_all`` returned, and a chunk whose send failed is sent again on the next
connection (at-least-once: a drop may repeat part of one chunk, never lose it).
``flush()`` returns when every byte written so far has been sent and drained.

Bytes the kernel accepted but the peer had not yet read when the channel broke
would be lost with the connection; after every send the link asks the kernel
how much is still unread (``SIOCOUTQ``/``TIOCOUTQ``, only trusted while the peer
has not hung up; otherwise the last good count plus everything sent since) and
keeps that many of the last bytes sent (up to ``replay_limit``). After a drop
they are sent again first.
So output is delivered at least once: a drop may repeat a little, never lose.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from guestagent.channels import Channel, Connector

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
_CHANNEL_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

InputHandler = Callable[[bytes | bytearray], Awaitable[None]]
ResizeHandler = Callable[[int, int], None]


class ConsoleLink:
    # The raw console carries one merged stream; a link that keeps stderr apart (the
    # session's ``MainAttach``) says so, and the runner then gives stderr its own pipe.
    separate_stderr = False

    def __init__(
        self,
        connector: Connector,
        *,
        buffer_limit: int = 4 * 1024 * 1024,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        replay_limit: int = 1024 * 1024,
    ) -> None:
        self.connector = connector
        self.buffer_limit = max(buffer_limit, 1)
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.on_input: InputHandler | None = None
        self.on_resize: ResizeHandler | None = None  # the runner's, for a tty: (rows, cols)
        self.initial_size: tuple[int, int] | None = None  # a tty's (rows, cols) from the start
        self.channel: Channel | None = None
        self.connects = 0
        self.drops = 0
        self.queued_total = 0
        self.sent_total = 0
        self.received_total = 0
        self.replay_limit = replay_limit
        self.replayed_total = 0
        # queued output as a deque of chunks (no copying on the way through)
        self._buf: collections.deque[bytes] = collections.deque()
        self._buf_size = 0
        self._buf_start = 0  # output offset of _buf[0] (goes back on replay)
        self._history: collections.deque[bytes] = collections.deque()  # sent, this connection
        self._history_size = 0
        self._inflight = 0  # of which possibly not yet read by the peer
        self._data = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self._progress = trio.lowlevel.ParkingLot()
        self._connected = trio.Event()

    # -- producer side ------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return self._buf_size

    async def write_stderr(self, data: bytes | bytearray) -> None:
        """The process's stderr, when ``separate_stderr``; merged here otherwise."""
        await self.write(data)

    async def write(self, data: bytes | bytearray) -> None:
        """Queue output; blocks while the buffer is full."""
        if not data:
            return
        while self._buf_size >= self.buffer_limit:
            await self._space.park()
        self._buf.append(bytes(data))
        self._buf_size += len(data)
        self.queued_total += len(data)
        self._data.unpark_all()

    async def flush(self, timeout: float = math.inf) -> bool:
        """Wait until all queued output has been sent and drained; False on timeout."""
        target = self.queued_total
        with trio.move_on_after(timeout):
            while self._buf_start < target:
                await self._progress.park()
            ch = self.channel
            if ch is not None:
                try:
                    await ch.drain()
                except _CHANNEL_ERRORS:
                    pass
            return True
        return False

    async def wait_connected(self) -> None:
        await self._connected.wait()

    # -- link ---------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        delay = self.backoff_min
        failing = False  # a connect failure is a WARNING once, then DEBUG until it connects
        while True:
            try:
                ch = await self.connector()
            except _CHANNEL_ERRORS as e:
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "console connect failed: %s; retry in %.2fs", e, delay)
                failing = True
                await trio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            failing = False
            self.connects += 1
            self.channel = ch
            self._connected.set()
            log.info("console connected over %s", ch.name)
            try:
                async with trio.open_nursery() as n:
                    n.start_soon(self._sender, ch, n.cancel_scope)
                    n.start_soon(self._receiver, ch, n.cancel_scope)
            finally:
                self.channel = None
                self._connected = trio.Event()
                with trio.CancelScope(shield=True):
                    try:
                        await ch.aclose()
                    except _CHANNEL_ERRORS:
                        pass
            self.drops += 1
            self._requeue_inflight()
            log.warning("console channel %s dropped; reconnecting", ch.name)
            await trio.sleep(self.backoff_min)
            delay = self.backoff_min

    def _requeue_inflight(self) -> None:
        n = min(self._inflight, self._history_size)
        left = n
        while left > 0 and self._history:
            chunk = self._history.pop()
            if len(chunk) > left:
                chunk = chunk[len(chunk) - left :]
            self._buf.appendleft(chunk)
            self._buf_size += len(chunk)
            left -= len(chunk)
        if n > 0:
            self._buf_start -= n
            self.replayed_total += n
            self._data.unpark_all()
        self._history.clear()
        self._history_size = 0
        self._inflight = 0

    async def _sender(self, ch: Channel, scope: trio.CancelScope) -> None:
        try:
            while True:
                while not self._buf:
                    await self._data.park()
                chunk = self._buf[0]
                await ch.stream.send_all(chunk)
                self._buf.popleft()
                self._buf_size -= len(chunk)
                self._buf_start += len(chunk)
                self.sent_total += len(chunk)
                if self.replay_limit > 0:
                    self._history.append(chunk)
                    self._history_size += len(chunk)
                    while self._history_size - len(self._history[0]) >= self.replay_limit:
                        self._history_size -= len(self._history.popleft())
                    # unread now if the kernel can tell (peer still there); else
                    # whatever was unread at the last good count plus all sent since
                    unread = ch.unsent()
                    self._inflight = self._inflight + len(chunk) if unread is None else unread
                self._space.unpark_all()
                self._progress.unpark_all()
        except _CHANNEL_ERRORS as e:
            log.debug("console send: %s", e)
            scope.cancel()

    async def _receiver(self, ch: Channel, scope: trio.CancelScope) -> None:
        try:
            while True:
                data = await ch.stream.receive_some(CHUNK)
                if not data:
                    break
                self.received_total += len(data)
                handler = self.on_input
                if handler is not None:
                    await handler(data)
        except _CHANNEL_ERRORS as e:
            log.debug("console receive: %s", e)
        scope.cancel()
