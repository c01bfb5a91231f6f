"""Stopping pumps at a safe point and passing their sockets on (relay.pump_freeze,
relay.pump_handoff), in one process: the "successor" is a second pump on dup()ed
fds. Real sockets, traffic both ways; every byte arrives once, in order."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

import trio
from prometheus_client import CollectorRegistry

from common.proto.link.header import OriginHeader
from relay.core.handoff_wire import Batch, Receiver
from relay.park import current_parker
from relay.pump import PumpCounters, pump
from relay.pump_freeze import Freeze
from relay.pump_handoff import (
    MOVED,
    NO_SAFE_POINT,
    SEND_FAILED,
    Enlisted,
    StreamMover,
    adopt_sockets,
)
from tests.support.waiting import wait_until


class End:
    """One outer end (the VM, or the appliance): numbered lines out, lines in."""

    def __init__(self, name: bytes, stream: trio.SocketStream) -> None:
        self.name = name
        self.stream = stream
        self.sent = bytearray()
        self.got = bytearray()
        self.stop = trio.Event()
        self.more = trio.Event()

    async def write(self) -> None:
        i = 0
        while not self.stop.is_set():
            chunk = b"".join(b"%s %08d\n" % (self.name, i + k) for k in range(50))
            i += 50
            self.sent += chunk
            await self.stream.send_all(chunk)
            await trio.sleep(0.001)  # pacing the load, not synchronising
        await self.stream.send_eof()

    async def read(self) -> None:
        while data := await self.stream.receive_some(65536):
            self.got += data
            self.more.set()

    async def wait_more(self, n: int) -> None:
        target = len(self.got) + n
        while len(self.got) < target:
            self.more = trio.Event()
            await self.more.wait()


def pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return trio.SocketStream(a), trio.SocketStream(b)


def enlist_one(
    mover: StreamMover, vm_side: trio.SocketStream, app_side: trio.SocketStream
) -> tuple[Freeze, PumpCounters]:
    """One stream enlisted with ``mover``: its freeze and counters."""
    f, c = Freeze(), PumpCounters()
    header = OriginHeader("e", "v", "tcp", "", "s")
    mover.enlist(Enlisted(f, "", header, "r", "p", "tcp", vm_side, app_side, c))
    return f, c


async def run_pump(
    a: trio.SocketStream,
    b: trio.SocketStream,
    counters: PumpCounters,
    freeze: Freeze | None,
    done: trio.Event | None = None,
) -> None:
    await pump(a, b, counters=counters, freeze=freeze)
    if done is not None:
        done.set()


async def test_busy_pumps_move_to_a_second_pump_exactly() -> None:
    mover = StreamMover(CollectorRegistry())
    passed: list[tuple[bytes, list[int]]] = []

    async def send(line: bytes, fds: Sequence[int]) -> None:
        passed.append((line, [os.dup(fd) for fd in fds]))  # what SCM_RIGHTS does

    ends: list[tuple[End, End]] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            olds = []
            for i in range(20):
                (vm, vm_side), (app_side, app) = pair(), pair()
                c, f = PumpCounters(), Freeze()
                h = OriginHeader("esx", "vm", "tcp", "", f"s-{i}")
                mover.enlist(Enlisted(f, "", h, "r", "p", "tcp", vm_side, app_side, c))
                done = trio.Event()
                n.start_soon(run_pump, vm_side, app_side, c, f, done)
                olds.append((vm_side, app_side, c, done))
                ends.append((End(b"up%02d" % i, vm), End(b"dn%02d" % i, app)))
            for up, down in ends:
                for e in (up, down):
                    n.start_soon(e.write)
                    n.start_soon(e.read)
            for up, down in ends:
                await up.wait_more(10_000)
                await down.wait_more(10_000)
            moved = await mover.move(send, 16, trio.current_time() + 5)  # batches of 8
            assert moved == 20 and len(passed) >= 3  # (a batch as soon as pumps stop)
            assert all(len(fds) <= 16 for _line, fds in passed)
            assert mover.paths.labels(MOVED)._value.get() == 20
            for vm_side, app_side, c, done in olds:  # the old pumps return, sockets open
                await done.wait()
                assert c.end_reason == "moved"
                await vm_side.aclose()
                await app_side.aclose()
            rx = Receiver()
            for line, fds in passed:
                for batch in rx.feed(line, fds):
                    assert not isinstance(batch, type(None))
                    for vm_fd, app_fd in getattr(batch, "fds", ()):
                        n.start_soon(run_pump, *adopt_sockets(vm_fd, app_fd), PumpCounters(), None)
            for up, down in ends:
                await up.wait_more(10_000)  # flowing through the new pumps
                await down.wait_more(10_000)
                up.stop.set()
                down.stop.set()
    for up, down in ends:
        assert down.got == up.sent and up.got == down.sent


async def test_a_copy_path_pump_finds_no_safe_point_and_runs_on() -> None:
    mover = StreamMover(CollectorRegistry())
    (vm, vm_side), (app_side, app) = pair(), pair()
    up, down = End(b"up", vm), End(b"dn", app)
    f, c = enlist_one(mover, vm_side, app_side)

    async def never(line: bytes, fds: Sequence[int]) -> None:
        raise AssertionError("nothing to pass")

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(lambda: pump(vm_side, app_side, counters=c, freeze=f, splice=False))
            for e in (up, down):
                n.start_soon(e.write)
                n.start_soon(e.read)
            await up.wait_more(5000)
            assert await mover.move(never, 250, trio.current_time() + 0.2) == 0
            assert mover.paths.labels(NO_SAFE_POINT)._value.get() == 1
            await up.wait_more(5000)  # still flowing here
            up.stop.set()
            down.stop.set()
    assert down.got == up.sent and up.got == down.sent and c.end_reason == "eof"


async def test_parked_pumps_are_woken_stopped_and_moved() -> None:
    """Idle pumps park (relay.park); the mover wakes them, they stop at once and
    move; what was typed while they were parked and after arrives exactly."""
    mover = StreamMover(CollectorRegistry())
    passed: list[tuple[bytes, list[int]]] = []

    async def send(line: bytes, fds: Sequence[int]) -> None:
        passed.append((line, [os.dup(fd) for fd in fds]))

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            streams = []
            for i in range(10):
                (vm, vm_side), (app_side, app) = pair(), pair()
                f, c = Freeze(), PumpCounters()
                h = OriginHeader("esx", "vm", "tcp", "", f"s-{i}")
                mover.enlist(Enlisted(f, "", h, "r", "p", "tcp", vm_side, app_side, c))
                n.start_soon(run_pump, vm_side, app_side, c, f)
                await vm.send_all(b"hello %d\n" % i)
                assert await app.receive_some(100) == b"hello %d\n" % i
                streams.append((vm, app, vm_side, app_side))
            await wait_until(lambda: current_parker().parked == 10, 10, "10 parked pumps")
            assert await mover.move(send, 250, trio.current_time() + 5) == 10
            await vm.send_all(b"while moving\n")  # (the last one) waits in the kernel
            for _vm, _app, vm_side, app_side in streams:
                await vm_side.aclose()
                await app_side.aclose()
            rx = Receiver()
            ((line, fds),) = passed
            (batch,) = rx.feed(line, fds)
            assert isinstance(batch, Batch) and len(batch.fds) == 10
            for vm_fd, app_fd in batch.fds:
                n.start_soon(run_pump, *adopt_sockets(vm_fd, app_fd), PumpCounters(), None)
            assert await app.receive_some(100) == b"while moving\n"
            for vm, app, _a, _b in streams:
                await app.send_all(b"back\n")
                assert await vm.receive_some(100) == b"back\n"
                await vm.aclose()
                await app.aclose()


async def test_a_failed_send_leaves_the_stopped_pumps_running_here() -> None:
    """The successor's connection fails: the pumps stopped for it run on, exactly."""
    mover = StreamMover(CollectorRegistry())
    (vm, vm_side), (app_side, app) = pair(), pair()
    up, down = End(b"up", vm), End(b"dn", app)
    f, c = enlist_one(mover, vm_side, app_side)

    async def broken(line: bytes, fds: Sequence[int]) -> None:
        raise BrokenPipeError("the successor died")

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(run_pump, vm_side, app_side, c, f)
            for e in (up, down):
                n.start_soon(e.write)
                n.start_soon(e.read)
            await up.wait_more(5000)
            assert await mover.move(broken, 250, trio.current_time() + 5) == 0
            assert mover.paths.labels(SEND_FAILED)._value.get() == 1
            await up.wait_more(5000)
            await down.wait_more(5000)
            up.stop.set()
            down.stop.set()
    assert down.got == up.sent and up.got == down.sent and c.end_reason == "eof"
