"""Console bytes on their way to the consoles: one backlog per port, in order.

Nothing an ESX connection's reader does waits on a console or the disk: console
bytes a console cannot take at once go into the port's backlog, drained by a
short-lived task (in port order, so a vMotion source's bytes still come before the
destination's); the reader stops reading only when that backlog passes
``console_backlog_bytes`` (``admits``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from vspc.console.chunks import coalesce
from vspc.console.hub import Console
from vspc.console.service import ConsoleService
from vspc.core.identity import PortKey
from vspc.esx_conn import EsxConnection

#: Console bytes of one port waiting for its console (disk backpressure) before
#: the port's ESX connection is no longer read (at most ``console.log-hold-bytes``;
#: none while the log disk is full).
CONSOLE_BACKLOG_BYTES = 4 << 20


@dataclass(eq=False)
class Backlog:
    """Console bytes of one port not yet taken by its console, in order (chunks as read)."""

    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    running: bool = False
    paused: set[EsxConnection] = field(default_factory=set)


class ConsoleBacklogs:
    """The backlogs of every port; ``nursery`` runs their drain tasks."""

    def __init__(
        self, consoles: ConsoleService, open_console: Callable[[PortKey], Console]
    ) -> None:
        self._consoles = consoles
        self._open_console = open_console
        self.by_port: dict[PortKey, Backlog] = {}
        self.gone = trio.Event()  # set (and replaced) as each backlog empties
        self.console_backlog_bytes = CONSOLE_BACKLOG_BYTES
        self.nursery: trio.Nursery | None = None

    def admits(self, key: PortKey, conn: EsxConnection) -> bool:
        """Whether ``conn`` (carrying ``key``) may be read more; if not, it is
        resumed once the backlog drains."""
        backlog = self.by_port.get(key)
        if backlog is None or backlog.size < self.limit():
            return True
        backlog.paused.add(conn)
        return False

    async def deliver(self, key: PortKey, data: bytes) -> None:
        """Console bytes, in port order; never waits (a backlog task does)."""
        backlog = self.by_port.get(key)
        console = self._open_console(key)
        if backlog is None and console.log_room() >= len(data):
            await console.from_vm(data)  # room: from_vm neither waits nor yields
            return
        if backlog is None:
            backlog = self.by_port[key] = Backlog()
        backlog.chunks.append(data)
        backlog.size += len(data)
        if not backlog.running:
            backlog.running = True
            assert self.nursery is not None
            self.nursery.start_soon(self._drain, key, backlog)

    async def _drain(self, key: PortKey, backlog: Backlog) -> None:
        console = self._open_console(key)
        try:
            while backlog.chunks:
                chunks, backlog.chunks, backlog.size = backlog.chunks, [], 0
                for data in coalesce(chunks):  # big chunks as they are: no copy
                    await console.from_vm(data)
                if backlog.paused and backlog.size < self.limit():
                    paused, backlog.paused = backlog.paused, set()
                    for conn in paused:
                        conn.resume_reading()
        finally:
            backlog.running = False
            if not backlog.chunks:
                del self.by_port[key]
                self.gone.set()
                self.gone = trio.Event()
            for conn in backlog.paused:
                conn.resume_reading()

    def limit(self) -> int:
        """Console bytes a port may have waiting before its connection is no longer
        read: at most ``log-hold-bytes``, and none while the log disk is full (the
        held bytes are the budget then)."""
        writer = self._consoles.writer
        if writer.holding:
            return 0
        return min(self.console_backlog_bytes, writer.settings.hold_bytes)
