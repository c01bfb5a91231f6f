"""Idle ESX connections without a task each: one watcher reads them all.

Most of the vSPC's ESX connections are idle most of the time: a console line now
and then, a liveness answer. A trio task per connection costs its memory (task,
coroutine frames, trio's wait registration: about a KiB each at 16,000 VMs), and
each read wakes one task of its own in whatever order trio's batch has, so a
VMOTION-BEGIN may wait behind every console read that became ready beside it.

A plain-TCP connection whose reader has nothing to wait for *parks* here: its
socket joins one epoll set and its task ends. One watcher task waits on that
epoll fd (``trio.lowlevel.wait_readable``), reads every ready socket without
blocking, and feeds each read through the connection's own processing inline
(``ParkedReads.process_parked``: the sans-IO core, then the service, which
hands console bytes on without waiting). Reads that carry option-232 commands
(IAC SB 232: vMotion control) are processed first, ahead of console bytes read
in the same round, and a vMotion answer is written by the watcher at once. A
round handles at most ``MAX_EVENTS`` sockets before it yields, so console work
never holds the loop for long.

A connection leaves the set (``unpark``) and gets a task again (``ParkedReads.run``)
when it must wait: its read budgets are spent, it is closing, its peer closed or
failed. TLS and relayed streams never park (their bytes are not the socket's).
``VIC_VSPC_PARK=0`` turns parking off (every connection keeps its task).
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from common.io import fastsock

if TYPE_CHECKING:
    from vspc.esx_owner import ConnectionOwner

ENV = "VIC_VSPC_PARK"
#: Sockets read per round before the watcher yields to the rest of the loop.
MAX_EVENTS = 64
#: Bytes read from a parked socket at once.
READ_SIZE = 65536
_CONTROL = b"\xff\xfa\xe8"  # IAC SB 232: a VMware extension command (vMotion, ...)


def enabled() -> bool:
    return os.environ.get(ENV, "1") not in ("0", "")


class Parking:
    """The epoll set of parked connections and the task that serves them."""

    def __init__(
        self,
        owner: ConnectionOwner,
        spawn: Callable[[ParkedReads], None],
    ) -> None:
        self._owner = owner
        self._spawn = spawn  # gives a connection a task again (ParkedReads.run)
        self._epoll: select.epoll | None = select.epoll()
        self._parked: dict[int, ParkedReads] = {}

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, conn: ParkedReads, fd: int) -> bool:
        """Watch ``conn`` (its socket ``fd``) instead of a task; False if it cannot."""
        if self._epoll is None:
            return False
        try:
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        except OSError:
            return False
        self._parked[fd] = conn
        return True

    def unpark(self, conn: ParkedReads, fd: int) -> None:
        """Stop watching ``conn`` and give it a task again."""
        if self._parked.get(fd) is conn:
            del self._parked[fd]
            conn.parked_fd = None
            if self._epoll is not None:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass
            self._spawn(conn)

    async def run(self) -> None:
        """Serve parked connections until cancelled; then every one gets its task back
        (to close, as its task is cancelled too)."""
        assert self._epoll is not None
        try:
            while True:
                ready = self._epoll.poll(0, MAX_EVENTS)
                if not ready:
                    await trio.lowlevel.wait_readable(self._epoll.fileno())
                    continue
                await self._round(ready)
                await trio.lowlevel.cancel_shielded_checkpoint()  # others run between rounds
        finally:
            epoll, self._epoll = self._epoll, None
            for fd, conn in list(self._parked.items()):
                self.unpark(conn, fd)
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()

    async def _round(self, ready: list[tuple[int, int]]) -> None:
        """Read every ready socket; process control reads first, then the others."""
        control: list[tuple[ParkedReads, bytes]] = []
        console: list[tuple[ParkedReads, bytes]] = []
        for fd, _events in ready:
            conn = self._parked.get(fd)
            if conn is None:
                continue
            data = conn.read_parked(READ_SIZE)
            if data is None:
                continue  # (nothing after all)
            if not data:  # EOF or an error: the connection's task closes it
                self.unpark(conn, fd)
            elif _CONTROL in data:
                control.append((conn, data))
            else:
                console.append((conn, data))
        for conn, data in control:
            await self._process(conn, data)
        for conn, data in console:
            await self._process(conn, data)

    async def _process(self, conn: ParkedReads, data: bytes) -> None:
        """One read; a connection that must wait, or reads in bulk, gets its task back."""
        stays = await conn.process_parked(data, self._owner)
        if not stays or len(data) >= READ_SIZE:
            fd = conn.parked_fd
            if fd is not None:
                self.unpark(conn, fd)


class ParkedReads:
    """ParkedReads's side of parking (a base class: the connection's own state)."""

    __slots__ = ("parked_fd", "parking")
    stream: trio.abc.Stream
    _sock: trio.socket.SocketType | None
    _closing: bool
    _writing: bool
    _control: bytearray
    _data: bytearray
    _nursery: trio.Nursery | None

    def __init__(self) -> None:
        self.parking: Parking | None = None  # set by the service: where it may park
        self.parked_fd: int | None = None  # its socket's fd while parked (no task)

    def _fail(self, e: BaseException) -> None:
        raise NotImplementedError

    def send_control(self, data: bytes) -> None:
        raise NotImplementedError

    async def _received(self, data: bytes, service: ConnectionOwner) -> None:
        raise NotImplementedError

    def _over_budget(self, service: ConnectionOwner) -> bool:
        raise NotImplementedError

    def _park(self) -> bool:
        """Leave the reading to the parking watcher (a plain socket stream only)."""
        sock, parking = self._sock, self.parking
        if parking is None or sock is None or type(self.stream) is not trio.SocketStream:
            return False
        fd = sock.fileno()
        if fd < 0 or not parking.park(self, fd):
            return False
        self.parked_fd = fd
        return True

    def read_parked(self, size: int) -> bytes | None:
        """A read without waiting (None: nothing yet; b"": EOF or an error, kept for
        the connection's task to report)."""
        sock = fastsock.stdlib_socket(self._sock) if self._sock is not None else None
        if sock is None:
            return b""
        try:
            return sock.recv(size)
        except BlockingIOError:
            return None
        except OSError as e:
            self._fail(trio.BrokenResourceError(f"socket broken: {e}"))
            return b""

    async def process_parked(self, data: bytes, service: ConnectionOwner) -> bool:
        """One read by the watcher: processed as the task would; whether it stays parked
        (not when it must wait for its budgets or is closing: its task does that)."""
        try:
            await self._received(data, service)
        except Exception as e:  # (reported by its task, as a reader's would be)
            self._fail(e)
        return not self._closing and not self._over_budget(service)

    def answer_at_once(self, data: bytes) -> bool:
        """A vMotion answer written without waiting (what the socket does not take is
        queued, written first): only on a plain socket stream with nothing queued or
        being written, so that it cannot overtake other bytes. False: nothing done."""
        if self._closing or self._writing or self._control or self._data:
            return False
        if self._nursery is None:  # (where a writer would start for the rest)
            return False
        if self._sock is None or type(self.stream) is not trio.SocketStream:
            return False
        sent = self._try_send(data)
        if sent < len(data):
            self.send_control(data[sent:])
        if sent:
            _hand_over()
        return True

    def _try_send(self, data: bytes) -> int:
        sock = fastsock.stdlib_socket(self._sock) if self._sock is not None else None
        try:
            return sock.send(data) if sock is not None else 0
        except OSError:  # (would block, or broken: the writer finds out)
            return 0


def _hand_over() -> None:
    """After a vMotion answer: the CPU to whoever it woke, if they wait for this one.

    Sending on a socket whose reader is on this machine (a relay; the bench's ESX
    hosts) wakes that reader, often on this CPU, where it waits until the scheduler
    preempts us: through the bookkeeping that follows the answer (~0.1-0.2 ms).
    ``sched_yield`` lets it run now (a syscall of ~1 us when nothing waits). Once
    per answered BEGIN: vMotions are rare, console bytes never come here."""
    os.sched_yield()
