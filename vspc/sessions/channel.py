"""One tethered VM's session on the appliance: its channels' events, in order, to
whoever uses each channel, and the main process's output to the container logs.

``VmSession`` is the consumer of one ``SessionEndpoint``'s events (it outlives
connections, like the endpoint): each channel's events go to that channel's
queue (``ChannelQueue``, taken by the one task that opened the channel); the
main process's (the attach channel the service opens for each session) go to
the container log store and to every attached client (``Tap``).

Bounds: the endpoint acknowledges the tether's bytes only as they are consumed
(``ack_on_consume``: an exec's when its sink took them, the main process's once
logged), so a channel's queue holds at most the tether's replay bound per
stream, and a slow exec client slows that exec alone: nothing here waits. A
tap that falls further behind than ``tap_bytes`` is dropped (its ``lagged``
is set), so one slow attached client never slows the main process or its logs.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from common.proto.session import channels as chs
from common.proto.session.messages import ExecSpec, ExitStatus, Stream
from vspc.containerlogs.store import ContainerLogs
from vspc.core.linelog import Stream as LogStream
from vspc.sessions.metrics import IN, OUT, SessionMetrics

TAP_BYTES = 1 << 20
_LOG_STREAM = {
    Stream.STDOUT: LogStream.STDOUT,
    Stream.STDERR: LogStream.STDERR,
    Stream.TTY: LogStream.STDOUT,
}


class Endpoint(Protocol):
    """What a ``VmSession`` needs of ``common.io.sealedsession.SessionEndpoint``."""

    def open_exec(self, spec: ExecSpec) -> int: ...
    def open_attach(self, tty: bool = False, rows: int = 0, cols: int = 0) -> int: ...
    def send(self, ch: int, stream: Stream, data: bytes) -> int: ...
    def eof(self, ch: int, stream: Stream) -> None: ...
    def resize(self, ch: int, rows: int, cols: int) -> bool: ...
    def signal(self, ch: int, signo: int) -> bool: ...
    def close(self, ch: int) -> None: ...
    def consumed(self, ch: int, stream: Stream, n: int) -> None: ...
    async def send_all(self, ch: int, stream: Stream, data: bytes) -> bool: ...
    @property
    def live(self) -> bool: ...


class MainState(enum.Enum):
    UNKNOWN = "unknown"  # no attach channel answered yet
    RUNNING = "running"
    EXITED = "exited"
    REFUSED = "refused"  # the tether has no main process to attach to


def _size(ev: chs.Event) -> int:
    return len(ev.data) + 64 if isinstance(ev, chs.Data) else 64


class ChannelQueue:
    """The events of one channel, for the one task that reads them."""

    def __init__(self, ch: int) -> None:
        self.ch = ch
        self._events: deque[chs.Event] = deque()
        self._held = 0
        self._put = trio.Event()

    @property
    def held(self) -> int:
        return self._held

    def put_nowait(self, ev: chs.Event) -> None:
        self._events.append(ev)
        self._held += _size(ev)
        self._put.set()

    async def get(self) -> chs.Event:
        while not self._events:
            self._put = trio.Event()
            await self._put.wait()
        ev = self._events.popleft()
        self._held -= _size(ev)
        return ev


class Tap:
    """An attached client's view of the main process's output (and its end)."""

    def __init__(self, limit: int = TAP_BYTES) -> None:
        self.limit = limit
        self.events: deque[chs.Data | chs.Exited] = deque()
        self.held = 0
        self.lagged = False
        self._wake = trio.Event()

    def push(self, ev: chs.Data | chs.Exited) -> None:
        if self.lagged:
            return
        self.events.append(ev)
        self.held += _size(ev)
        if self.held > self.limit:
            self.lagged = True
            self.events.clear()
        self._wake.set()

    async def get(self) -> chs.Data | chs.Exited | None:
        """The next event; None once the tap was dropped for lagging."""
        while not self.events and not self.lagged:
            self._wake = trio.Event()
            await self._wake.wait()
        if self.lagged:
            return None
        ev = self.events.popleft()
        self.held -= _size(ev)
        return ev


@dataclass
class MainProcess:
    ch: int | None = None
    state: MainState = MainState.UNKNOWN
    exit: ExitStatus | None = None
    reason: str = ""


class VmSession:
    """See the module doc."""

    def __init__(
        self,
        vm: str,
        endpoint: Endpoint,
        logs: ContainerLogs,
        *,
        clock: Callable[[], float] = time.time,
        metrics: SessionMetrics | None = None,
    ) -> None:
        self.vm = vm
        self.metrics = metrics or SessionMetrics(None)
        self._lost = logs.lines_lost(vm)
        self.ep = endpoint
        self.logs = logs
        self.clock = clock
        self.queues: dict[int, ChannelQueue] = {}
        self.taps: set[Tap] = set()
        self.main = MainProcess()
        self.main_size = (0, 0)  # the last size an attached client gave the main process
        self.connections = 0
        self.changed = trio.Event()

    @property
    def connected(self) -> bool:
        return self.ep.live

    async def wait_main(self, *states: MainState) -> None:
        """Until the main process is in one of ``states``."""
        while self.main.state not in states:
            await self.changed.wait()

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def open_main(self, size: tuple[int, int] = (0, 0)) -> None:
        """Attach to the main process: its output goes to the logs and the taps; its
        pty (if it has one) gets ``size`` before any output is relayed."""
        self.main_size = size
        self.main = MainProcess(ch=self.ep.open_attach(False, *size))

    def dispatch(self, ev: chs.Event) -> None:
        if isinstance(ev, chs.Resumed):
            self.connections += 1
            self.notify()
            return
        if isinstance(ev, chs.Data):
            self.metrics.carried(IN, len(ev.data))
        ch = getattr(ev, "ch", None)
        if ch is not None and ch == self.main.ch:
            self._on_main(ev)
            return
        if ch is not None and (q := self.queues.get(ch)) is not None:
            q.put_nowait(ev)

    def _on_main(self, ev: chs.Event) -> None:
        m = self.main
        if isinstance(ev, chs.ChannelOpened):
            m.state = MainState.RUNNING
            self.logs.append(self.vm, LogStream.STDOUT, b"", self.clock())  # followers wait
        elif isinstance(ev, chs.OpenRefused):
            m.state, m.reason = MainState.REFUSED, ev.reason
        elif isinstance(ev, chs.Data):
            self._log(ev)
            self.ep.consumed(ev.ch, ev.stream, len(ev.data))
            for tap in self.taps:
                tap.push(ev)
        elif isinstance(ev, chs.Exited):
            m.state, m.exit = MainState.EXITED, ev.status
            self.logs.close(self.vm, self.clock())
            for tap in self.taps:
                tap.push(ev)
            self.close(ev.ch)
        else:
            return
        self.notify()

    def _log(self, ev: chs.Data) -> None:
        stream = _LOG_STREAM[ev.stream]
        self.logs.append(self.vm, stream, ev.data, self.clock())
        self.metrics.logged(stream, ev.data)
        lost = self.logs.lines_lost(self.vm)
        self.metrics.lost_lines(lost - self._lost)
        self._lost = lost

    def queue(self, spec: ExecSpec) -> ChannelQueue:
        """Open an exec channel; its events go to the returned queue."""
        ch = self.ep.open_exec(spec)
        q = self.queues[ch] = ChannelQueue(ch)
        return q

    def forget(self, ch: int) -> None:
        self.queues.pop(ch, None)

    def close(self, ch: int) -> None:
        """Close our end of ``ch`` unless it is closing already."""
        try:
            self.ep.close(ch)
        except chs.ChannelStateError:
            pass

    async def send_all(self, ch: int, data: bytes) -> bool:
        """``data`` to the channel's stdin, waiting for room; False: the channel is gone."""
        sent = await self.ep.send_all(ch, Stream.STDIN, data)
        if sent:
            self.metrics.carried(OUT, len(data))
        return sent

    def fail_all(self, reason: str) -> None:
        """The session was lost (the tether restarted): every open channel ends."""
        for q in self.queues.values():
            q.put_nowait(chs.OpenRefused(q.ch, reason))
