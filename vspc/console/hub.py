"""Per-port consoles: replay ring, log queue and fan-out to attached clients.

``Console.from_vm`` never waits on a client: each client has a bounded queue (of
chunks, shared with the caller without a copy), and
a client whose queue would overflow is dropped with a one-line notice. It waits
only when the port's log queue is full (disk backpressure; bytes are never
dropped). Attaching takes the replay snapshot and registers the client in one
step with no checkpoint in between, so replay and live data meet with no gap and
no duplicate.

A port's input goes to the newest of its live VM connections (``connect``
returns a ``Link``; ``disconnect`` it when that connection ends: the one before
it gets the input back). With none, keystrokes are discarded with a notice to
the typist, and attached clients are told when the VM goes and comes back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from common.ops.wiretext import wire
from common.proto.console.protocol import Mode
from common.proto.console.ring import Ring
from vspc.console.clientqueue import Client, notice
from vspc.console.config import ConsoleConfig
from vspc.console.eventlog import format_event
from vspc.console.history import meta_bytes
from vspc.console.info import Attached, ConsoleInfo
from vspc.console.logbatch import PortLog
from vspc.console.logfile import file_stem
from vspc.console.logwriter import LogWriter
from vspc.console.retention import Retention
from vspc.core.identity import PortKey
from vspc.metrics import VspcMetrics

log = logging.getLogger("vspc.console")

InputSink = Callable[[bytes], Awaitable[None]]


class ConsoleBusy(Exception):
    """An attach refused by the port's mode rules or client limit."""


class Hub:
    """What all consoles of one service share: config, log writer, metrics, retention."""

    def __init__(self, config: ConsoleConfig, writer: LogWriter, metrics: VspcMetrics) -> None:
        self.config = config
        self.writer = writer
        self.metrics = metrics
        self.retention: Retention[PortKey] = Retention(config.retention, config.max_departed)
        self.sweep = trio.Event()  # retention has work to do now

    def idle(self, console: Console) -> None:
        if self.retention.departed(console.key, trio.current_time()):
            self.sweep.set()

    def busy(self, console: Console) -> None:
        self.retention.returned(console.key)


class Link:
    """One live VM connection of a console: where keystrokes go while it is the newest."""

    __slots__ = ("origin", "sink")

    def __init__(self, sink: InputSink, origin: str) -> None:
        self.sink = sink
        self.origin = origin  # the ESX host (vSPC) or the relay host (relayed stream)


class Console:
    """One VM serial port's console (keyed by PortKey; survives reconnects and vMotion)."""

    __slots__ = (
        "_clients",
        "_display",
        "_hub",
        "_links",
        "_lock",
        "_log",
        "_ring",
        "bytes_to_vm",
        "history_read",
        "key",
        "last_seen",
        "origin",
    )

    def __init__(self, hub: Hub, key: PortKey, display: str) -> None:
        self._hub = hub
        self.key = key
        self.bytes_to_vm = 0
        self._ring = Ring(hub.config.ring_bytes)
        self._log = PortLog(file_stem(key))
        self._clients: list[Client] = []
        self._links: list[Link] = []  # live VM connections, newest last
        self._lock: trio.Lock | None = None  # created when a writer has to wait
        self.history_read = False  # the replay ring has what the log files held before
        self.last_seen: float | None = None  # wall clock, when its last VM connection ended
        self.origin = ""  # where its newest VM connection came from
        self._display = ""
        self.display = display
        hub.idle(self)

    @property
    def display(self) -> str:
        return self._display

    @display.setter
    def display(self, display: str) -> None:
        if display != self._display:
            self._display = display
            if self._hub.writer.enabled:
                self._hub.writer.meta(self._log, meta_bytes(self.key, display))

    @property
    def connected(self) -> bool:
        """Whether any VM connection of this port is live."""
        return bool(self._links)

    @property
    def idle(self) -> bool:
        """No VM connection, no client, nothing on its way to the log: may be forgotten."""
        return not self._links and not self._clients and self._log.idle

    # --- the VM side -------------------------------------------------------------

    @property
    def bytes_from_vm(self) -> int:
        return self._ring.total

    async def from_vm(self, data: bytes) -> None:
        """VM output: ring + log + fan-out. Waits only for room in the log queue.

        Does not yield to the scheduler when there is room (the caller's own
        receive is the checkpoint).
        """
        if not data:
            return
        writer = self._hub.writer
        if writer.enabled and (
            (self._lock is not None and self._lock.locked()) or writer.room(self._log) < len(data)
        ):
            await self._from_vm_slow(data)
            return
        self._deliver(data)

    async def _from_vm_slow(self, data: bytes) -> None:
        """Deliver ``data`` as the log queue makes room.

        Waits for room for the whole rest, or for a quarter of what the queue can
        hold if the rest is bigger: pieces stay big (a piece is a view of
        ``data``, which the log queue then copies), and a chunk that fits is
        delivered whole, without any copy.
        """
        if self._lock is None:
            self._lock = trio.Lock()
        mv = memoryview(data)
        async with self._lock:
            writer = self._hub.writer
            while mv:
                if not writer.enabled:
                    self._deliver(mv)
                    return
                s = writer.settings
                most = min(s.queue_bytes, s.queue_total_bytes, s.hold_bytes)
                want = max(1, min(len(mv), most // 4))
                room = writer.room(self._log)
                if room < want:
                    await writer.wait_room()
                    continue
                if room >= len(mv):
                    self._deliver(data if len(mv) == len(data) else mv)
                    return
                self._deliver(mv[:room])
                mv = mv[room:]

    def _deliver(self, data: bytes | memoryview) -> None:
        self._ring.append(data)
        hub = self._hub
        if hub.writer.enabled:
            hub.writer.write(self._log, data)
        if self._clients:
            limit = hub.config.client_queue_bytes
            slow = [c for c in self._clients if not c.push(data, limit)]
            for c in slow:  # after the loop: dropping edits the list
                self._drop_slow(c)

    def log_room(self) -> float:
        """Bytes ``from_vm`` takes now without waiting for the log."""
        writer = self._hub.writer
        return writer.room(self._log) if writer.enabled else math.inf

    def connect(self, sink: InputSink, origin: str = "") -> Link:
        """A VM connection of this port is live; it gets the input until a newer one comes."""
        link = Link(sink, origin)
        self.origin = origin or self.origin
        self._links.append(link)
        if len(self._links) == 1:
            self._hub.busy(self)
            self.event("vm_connected")
            self._tell_clients("VM connected")
        return link

    def disconnect(self, link: Link) -> None:
        """That connection ended: the input goes back to the newest one still live."""
        try:
            self._links.remove(link)
        except ValueError:
            return
        if not self._links:
            self.last_seen = time.time()
            self.event("vm_disconnected")
            self._tell_clients("VM disconnected")
            self._check_idle()

    def _tell_clients(self, text: str) -> None:
        limit = self._hub.config.client_queue_bytes
        for c in self._clients:
            if c.notices:
                c.push(notice(text), limit)

    def _check_idle(self) -> None:
        if not self._links and not self._clients:
            self._hub.idle(self)

    async def read_history(self) -> None:
        """Once: put what the log files held before this run (from before a restart,
        or before this console was forgotten) in front of the replay ring."""
        if self.history_read:
            return
        self.history_read = True
        ring = self._ring
        if ring.total >= ring.capacity:
            return  # full of this run's bytes already
        older = await self._hub.writer.read_history(self._log, ring.capacity)
        if older:
            ring.prepend(older)

    def event(self, kind: str, **fields: object) -> None:
        """One line in the port's sidecar event log."""
        writer = self._hub.writer
        if writer.enabled:
            writer.event(self._log, format_event(kind, fields, time.time()))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s", self.key, kind, wire(str(fields)))

    # --- clients -----------------------------------------------------------------

    @property
    def clients(self) -> tuple[Client, ...]:
        return tuple(self._clients)

    def attach(
        self,
        mode: Mode,
        replay: int,
        peer: str = "",
        *,
        preamble: bytes = b"",
        notices: bool = True,
    ) -> Client:
        """Register a client; its queue starts with ``preamble`` then the replay.

        Raises ConsoleBusy. Synchronous on purpose: no VM byte can slip between
        the replay snapshot and the registration.
        """
        cfg = self._hub.config
        if len(self._clients) >= cfg.max_clients:
            raise ConsoleBusy(f"{len(self._clients)} clients attached (max-clients)")
        if mode != "ro":
            if any(c.mode == "exclusive" for c in self._clients):
                raise ConsoleBusy("an exclusive writer is attached; attach read-only (ro)")
            if mode == "exclusive" and any(c.writes for c in self._clients):
                raise ConsoleBusy("writers are attached; exclusive mode refused")
        data = self._ring.last(replay)
        client = Client(mode, peer, preamble + data, notices)
        self._clients.append(client)
        self._hub.busy(self)
        self._hub.metrics.console_clients.inc()
        self.event("client_attach", client=client.id, peer=peer, mode=mode, replay=len(data))
        return client

    def replay_size(self, requested: int) -> int:
        return min(requested, len(self._ring))

    def detach(self, client: Client, reason: str = "closed") -> None:
        try:
            self._clients.remove(client)
        except ValueError:
            return
        client.close()
        self._hub.metrics.console_clients.dec()
        self.event(
            "client_detach", client=client.id, peer=client.peer, reason=reason, sent=client.sent
        )
        self._check_idle()

    def _drop_slow(self, client: Client) -> None:
        cfg = self._hub.config
        client.dropped = True
        client.close(
            notice(f"disconnected: client fell more than {cfg.client_queue_bytes} bytes behind"),
            deadline=trio.current_time() + cfg.drop_notice_timeout,
        )
        self._hub.metrics.slow_clients_dropped_total.inc()
        log.warning("console %s: dropped slow client %s (%s)", self.key, client.id, client.peer)
        self.detach(client, reason="slow")

    async def from_client(self, client: Client, data: bytes) -> None:
        """Keystrokes from a client: to the VM if it may write and the VM is there."""
        if not client.writes:
            if client.notified_epoch != -2:
                client.notified_epoch = -2
                client.push(
                    notice("read-only: input discarded"), self._hub.config.client_queue_bytes
                )
            return
        if not self._links:
            self._discarded(client, len(data), "VM not connected")
            return
        link = self._links[-1]
        try:
            await link.sink(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._discarded(client, len(data), "VM connection lost")
            return
        self.bytes_to_vm += len(data)

    def _discarded(self, client: Client, n: int, why: str) -> None:
        client.push(notice(f"{why}; {n} bytes discarded"), self._hub.config.client_queue_bytes)

    # --- service -----------------------------------------------------------------

    def info(self) -> ConsoleInfo:
        return ConsoleInfo(
            key=self.key,
            display=self.display,
            connected=self.connected,
            bytes=self._ring.total,
            clients=len(self._clients),
            bytes_to_vm=self.bytes_to_vm,
            origin=self._links[-1].origin if self._links else self.origin,
            last_seen=time.time() if self._links else self.last_seen,
            attached=tuple(Attached(c.peer, c.mode) for c in self._clients),
        )

    def apply_config(self, config: ConsoleConfig) -> None:
        if config.ring_bytes != self._ring.capacity:
            self._ring.resize(config.ring_bytes)

    @property
    def log_queued(self) -> int:
        return self._log.queued

    async def wait_logged(self) -> None:
        """Until the VM bytes given so far are in the log file (at once with no log)."""
        writer = self._hub.writer
        while writer.enabled and self._log.queued:
            await writer.wait_room()  # (asks for the write now; woken after each batch)

    async def log_size(self) -> int | None:
        """The log file's size once what is queued is written (None: no log)."""
        await self.wait_logged()
        return await self._hub.writer.log_size(self._log)

    async def flush_events(self) -> None:
        """Until the events given so far are in the event log."""
        await self._hub.writer.flush()

    def events_path(self) -> Path | None:
        return self._hub.writer.events_path(self._log)
