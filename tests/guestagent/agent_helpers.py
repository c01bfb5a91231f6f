"""Shared pieces for agent tests: an appliance-side console sink and agent set-up."""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import struct
import termios
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from guestagent.agent import Agent
from guestagent.config import (
    AgentConfig,
    AgentSection,
    ConsoleConfig,
    GuestinfoConfig,
    NetworkConfig,
)


def pending_bytes(fd: int) -> int:
    """Bytes waiting in a socket/tty receive queue (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


@dataclass
class Sink:
    """Appliance end of a hybrid-vsock/unix console: accepts connections, keeps all bytes."""

    path: str
    keep: bool = True  # keep the bytes (else only count and hash them)
    data: bytearray = field(default_factory=bytearray)
    total: int = 0
    sha: Any = field(default_factory=hashlib.sha256)
    connections: int = 0
    streams: list[trio.SocketStream] = field(default_factory=list)
    per_connection: list[bytearray] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)
    max_per_connection: int | None = None  # drop the connection after this many bytes
    max_drops: int = 3  # ... this many times
    drops: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        lst = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await lst.bind(self.path)
        lst.listen(8)
        task_status.started()
        async with trio.open_nursery() as n:
            while True:
                s, _ = await lst.accept()
                self.connections += 1
                n.start_soon(self._handle, trio.SocketStream(s))

    async def _handle(self, st: trio.SocketStream) -> None:
        self.streams.append(st)
        mine = bytearray()
        if self.keep:
            self.per_connection.append(mine)
        got = 0
        try:
            while True:
                chunk = await self._receive(st)
                if not chunk:
                    break
                if self.keep:
                    self.data += chunk
                    mine += chunk
                self.total += len(chunk)
                self.sha.update(chunk)
                got += len(chunk)
                self.changed.set()
                self.changed = trio.Event()
                if (
                    self.max_per_connection is not None
                    and got >= self.max_per_connection
                    and self.drops < self.max_drops
                ):
                    self.drops += 1
                    break
        finally:
            if st in self.streams:
                self.streams.remove(st)
            await st.aclose()

    @staticmethod
    async def _receive(st: trio.SocketStream) -> bytes:
        """Read without a checkpoint between the kernel and our counters (trio's
        receive_some yields once after the recv), so ``total + pending()`` is exact
        whenever another task looks."""
        fd = st.socket.fileno()
        while True:
            try:
                return os.read(fd, 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
            except OSError:
                return b""

    async def wait_for(self, needle: bytes) -> None:
        while needle not in self.data:
            await self.changed.wait()

    def pending(self) -> int:
        return sum(pending_bytes(s.socket.fileno()) for s in self.streams)


def agent_config(
    tmp: Path,
    *,
    vm: str = "vm1",
    console: str = "hybrid",
    console_path: str | None = None,
    port: int = 1024,
    publish_net: bool = False,
    **agent_kw: object,
) -> AgentConfig:
    return AgentConfig(
        guestinfo=GuestinfoConfig(backend="file", path=str(tmp / f"{vm}.json")),
        console=ConsoleConfig(
            transport=console,  # type: ignore[arg-type]
            path=console_path or str(tmp / "con"),
            port=port,
            backoff_min=0.01,
            backoff_max=0.2,
        ),
        network=NetworkConfig(publish=publish_net),
        agent=AgentSection(subreaper=False, drain_grace=5.0, **agent_kw),  # type: ignore[arg-type]
    )


async def start_agent(nursery: trio.Nursery, cfg: AgentConfig) -> Agent:
    agent = Agent(cfg)
    await nursery.start(agent.run)
    return agent
