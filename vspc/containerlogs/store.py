"""The appliance's container logs: per VM, stdout and stderr as timestamped lines.

``ContainerLogs.append(vm, stream, data, now)`` frames a stream's bytes into
lines (``vspc.core.linelog``) and queues their records for the VM's files; it
never waits. The files are written, rotated and kept bounded by the console's
machinery (``vspc.console.logwriter``, in whole lines, in its own directory):
off the event loop in one thread, ``<stem>.log`` rotated at ``max_bytes`` with
``keep`` older files (so at most ``(keep + 1) * max_bytes`` per VM, plus its
``<stem>.events.jsonl``), where ``<stem>`` is ``<vm>_container``.

Bounds: per VM, an unfinished line (``max_line`` per stream), the queue towards
its files (``queue_bytes``, and ``queue_total_bytes`` over all VMs), each
follower (``follower_bytes``) and how many follow it (``max_followers``). Lines
with no room in the queue (the disk is full beyond what the writer holds, or
the writer is behind) are not written: they are counted (``lines_lost``, the
console's gap metrics) and recorded as a ``gap`` event in the VM's event log,
as the console logs do. Followers still get them.

Reads (``lines``, and ``read`` and ``follow`` on it) see the files and the
lines still queued, each line once; ``lines`` gives them a page at a time
(``vspc.containerlogs.files``: a reader holds a page, not the files), and with
``follow`` then each line as it is appended (woken by ``append``, no timer),
until the VM's output ends (``close``). ``vspc.containerlogs.shapes.logs`` puts
them in kubelet's and docker's shapes.

A VM whose output ended is forgotten (its memory, not its files) after
``retention_seconds``, or beyond ``max_departed`` of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from vspc.console.eventlog import format_event
from vspc.console.history import meta_bytes
from vspc.console.logbatch import LogSettings, PortLog
from vspc.console.logfile import file_stem
from vspc.console.logwriter import LogWriter
from vspc.console.retention import Retention
from vspc.containerlogs.files import Snapshot, pending_lines, select_back, snapshot
from vspc.containerlogs.follow import Follower
from vspc.core.identity import PortKey, vm_key
from vspc.core.linelog import MAX_LINE, STREAMS, LineFramer, LogLine, Stream, to_ns
from vspc.metrics import VspcMetrics

LABEL = "container"


class TooManyFollowers(Exception):
    pass


@dataclass(frozen=True)
class ContainerLogSettings:
    dir: Path | None
    max_bytes: int = 10 * 1024 * 1024
    keep: int = 4
    max_line: int = MAX_LINE
    queue_bytes: int = 1024 * 1024
    queue_total_bytes: int = 64 * 1024 * 1024
    hold_bytes: int = 4 * 1024 * 1024
    follower_bytes: int = 1024 * 1024
    max_followers: int = 64
    retention_seconds: float = 3600.0
    max_departed: int = 1024

    def log_settings(self) -> LogSettings:
        return LogSettings(
            self.dir,
            self.max_bytes,
            self.keep,
            self.queue_bytes,
            self.queue_total_bytes,
            self.hold_bytes,
            whole_lines=True,
        )


class VmLog:
    """One VM's state: its framers, its queue towards the files, its followers."""

    __slots__ = ("followers", "framers", "key", "last", "lines_lost", "open", "port")

    def __init__(self, key: PortKey) -> None:
        self.key = key
        self.port = PortLog(file_stem(key))
        self.framers: dict[Stream, LineFramer] = {}
        self.followers: set[Follower] = set()
        self.open = False
        self.last = -math.inf  # the latest time stamped: times never go backwards
        self.lines_lost = 0


class ContainerLogs:
    """See the module doc. ``run`` must be running for lines to reach the files."""

    def __init__(self, settings: ContainerLogSettings, metrics: VspcMetrics | None = None) -> None:
        self.settings = settings
        self.writer = LogWriter(settings.log_settings(), metrics, what="container")
        self._vms: dict[str, VmLog] = {}
        self._retention: Retention[str] = Retention(
            settings.retention_seconds, settings.max_departed
        )

    async def run(self) -> None:
        await self.writer.run()

    async def flush(self) -> None:
        await self.writer.flush()

    def _vm(self, vm: str) -> VmLog:
        key = vm_key(vm)
        v = self._vms.get(key)
        if v is None:
            v = self._vms[key] = VmLog(PortKey(key, LABEL))
        return v

    def _start(self, v: VmLog, now: float) -> None:
        v.open = True
        v.framers = {s: LineFramer(s, self.settings.max_line) for s in Stream}
        self._retention.returned(v.key.uuid)
        self.forget_due(now)
        self.writer.meta(v.port, meta_bytes(v.key, v.key.uuid))
        self.writer.event(v.port, format_event("vm_connected", {}, now))

    def append(self, vm: str, stream: Stream, data: bytes, now: float) -> None:
        """``data`` from the VM's ``stream``, arrived at ``now`` (epoch seconds)."""
        v = self._vm(vm)
        if not v.open:
            self._start(v, now)
        v.last = max(v.last, now)
        self._emit(v, v.framers[stream].feed(data, v.last))

    def close(self, vm: str, now: float | None = None) -> None:
        """The VM's output ended (its container stopped): the unfinished lines
        are logged as partial, followers end, its memory may be forgotten."""
        now = time.time() if now is None else now
        v = self._vms.get(vm_key(vm))
        if v is None or not v.open:
            return
        v.last = max(v.last, now)
        for framer in v.framers.values():
            self._emit(v, framer.eof(v.last))
        v.open, v.framers = False, {}
        self.writer.event(v.port, format_event("vm_disconnected", {}, now))
        for f in v.followers:
            f.end()
        self._retention.departed(v.key.uuid, now)
        self.forget_due(now)

    def forget_due(self, now: float) -> None:
        """Forget the memory of VMs whose output ended long enough ago."""
        for key in self._retention.due(now):
            v = self._vms.get(key)
            if v is not None and (v.followers or not v.port.idle):
                continue  # still read or written: the next time
            self._retention.returned(key)
            self._vms.pop(key, None)

    def _emit(self, v: VmLog, lines: list[LogLine]) -> None:
        if not lines:
            return
        records = [line.record() for line in lines]
        writer = self.writer
        room = writer.room(v.port)
        size = sum(map(len, records))
        if size <= room:
            writer.write(v.port, b"".join(records))
        else:
            keep: list[bytes] = []
            for rec in records:  # the lines that fit, then one hole
                if len(rec) > room:
                    break
                keep.append(rec)
                room -= len(rec)
            lost = len(records) - len(keep)
            if keep:
                writer.write(v.port, b"".join(keep))
            v.lines_lost += lost
            reason = "disk full" if writer.holding else "log queue full"
            writer.lost(v.port, size - sum(map(len, keep)), reason)
        for f in v.followers:
            f.push(lines)

    def lines_lost(self, vm: str) -> int:
        v = self._vms.get(vm_key(vm))
        return v.lines_lost if v is not None else 0

    def memory(self, vm: str) -> int:
        """Bytes held in memory for the VM (unfinished lines, queue, followers)."""
        v = self._vms.get(vm_key(vm))
        if v is None:
            return 0
        framed = sum(f.held for f in v.framers.values())
        return framed + v.port.queued + sum(f.held for f in v.followers)

    async def read(
        self,
        vm: str,
        *,
        tail: int | None = None,
        since: float | None = None,
        streams: frozenset[Stream] = STREAMS,
    ) -> list[LogLine]:
        """The VM's lines logged so far: the last ``tail`` (all: None) of those
        stamped at or after ``since`` (epoch seconds; all: None), oldest first.
        (All in memory: ``lines`` gives them a page at a time.)"""
        async with self.lines(vm, tail=tail, since=since, streams=streams) as lines:
            return [line async for line in lines]

    @asynccontextmanager
    async def lines(
        self,
        vm: str,
        *,
        tail: int | None = None,
        since: float | None = None,
        streams: frozenset[Stream] = STREAMS,
        follow: bool = False,
    ) -> AsyncIterator[Follower]:
        """``async with logs.lines(vm) as lines: async for line in lines``: what
        ``read`` gives, a page at a time; with ``follow``, then each line as it
        is appended, until the VM's output ends."""
        key = vm_key(vm)
        since_ns = None if since is None else to_ns(since)
        async with self.writer.settled():
            # from here to the registration, no await: no line slips between
            v = self._vms.get(key) or VmLog(PortKey(key, LABEL))  # (a read keeps no state)
            queued = pending_lines(v.port.pending, streams)  # not in the files yet
            follower = self._follower(v, streams, follow)
            try:
                newer, snap = await self._snapshot(v, queued, tail, since_ns, streams)
            except BaseException:
                v.followers.discard(follower)
                raise
        try:
            pages = None if snap is None else partial(trio.to_thread.run_sync, snap.page, streams)
            follower.prime(pages, newer)
            yield follower
        finally:
            v.followers.discard(follower)
            if snap is not None:
                snap.close()

    def follow(
        self,
        vm: str,
        *,
        tail: int | None = None,
        since: float | None = None,
        streams: frozenset[Stream] = STREAMS,
    ) -> AbstractAsyncContextManager[Follower]:
        """``lines(..., follow=True)``."""
        return self.lines(vm, tail=tail, since=since, streams=streams, follow=True)

    def _follower(self, v: VmLog, streams: frozenset[Stream], follow: bool) -> Follower:
        """A reader of ``v``; following, it is given every line appended from now on."""
        if follow and len(v.followers) >= self.settings.max_followers:
            raise TooManyFollowers(f"{v.key.uuid}: {len(v.followers)} followers already")
        follower = Follower(streams, self.settings.follower_bytes)
        if follow and v.open:
            v.followers.add(follower)
        else:
            follower.end()  # what is logged, and no more
        return follower

    async def _snapshot(
        self,
        v: VmLog,
        queued: list[LogLine],
        tail: int | None,
        since_ns: int | None,
        streams: frozenset[Stream],
    ) -> tuple[list[LogLine], Snapshot | None]:
        """The queued lines to give, and the part of the files to give before them."""
        newer = select_back(reversed(queued), tail, since_ns)
        if tail is not None:
            tail -= len(newer)
            if tail <= 0:
                return newer, None
        if since_ns is not None and len(newer) < len(queued):
            return newer, None  # the queue reaches back before ``since``: the files are older
        log_dir = self.settings.dir
        if log_dir is None:
            return newer, None
        snap = partial(snapshot, tail=tail, since_ns=since_ns, streams=streams)
        return newer, await self.writer.in_thread(snap, log_dir, v.port.stem)
