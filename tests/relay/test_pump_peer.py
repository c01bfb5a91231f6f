"""Moving VM streams whose egress is a resumable peer-link stream (relay.pump_peer,
common.link.resume_export), in one process: the "old relay" is one Router, the
"successor" a second Router to the same acceptor (an echo), the VM sockets pass
as dup()ed fds. Traffic both ways; every byte once, in order, and the acceptor
keeps each session (it is resumed, never continued)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import trio
import trio.testing
from prometheus_client import CollectorRegistry

from common.link.peerlink import LinkConfig
from common.link.resumable import ResumableStream
from common.link.resume_export import StreamImage, restore_stream
from common.link.route import Route, Router
from common.proto.link.header import OriginHeader, encode_header
from relay.core.handoff_wire import Batch, Receiver, Resumed
from relay.pump import PumpCounters, pump
from relay.pump_handoff import MOVED, SEND_FAILED, Enlisted, StreamMover, adopt_socket
from relay.pump_peer import EgressView, PeerFreeze, VmView
from tests.common.link.link_harness import acceptor
from tests.relay.test_pump_freeze import End, pair

N = 10


async def run_old(f: PeerFreeze, c: PumpCounters) -> None:
    with f.scope:
        await pump(VmView(f), EgressView(f), counters=c)
    f.ended = True


class Vm(End):
    """A VM end whose reader says when the echo's EOF came."""

    def __init__(self, name: bytes, stream: trio.SocketStream) -> None:
        super().__init__(name, stream)
        self.closed = trio.Event()

    async def read(self) -> None:
        await super().read()
        self.closed.set()


async def finish(ends: list[Vm]) -> None:
    for e in ends:
        e.stop.set()
    for e in ends:
        await e.closed.wait()


async def start_streams(
    n: trio.Nursery, router: Router, mover: StreamMover
) -> tuple[list[Vm], list[PeerFreeze]]:
    ends: list[Vm] = []
    freezes = []
    for i in range(N):
        vm, vm_side = pair()
        h = OriginHeader("esx", "vm", "tcp", "", f"s-{i}")
        st = await router.open_stream(encode_header(h))
        f, c = PeerFreeze(vm_side, st), PumpCounters()
        mover.enlist(Enlisted(f, "", h, "r", "p", "peer", vm_side, st, c))
        n.start_soon(run_old, f, c)
        end = Vm(b"vm%02d" % i, vm)
        n.start_soon(end.write)
        n.start_soon(end.read)
        ends.append(end)
        freezes.append(f)
    return ends, freezes


def adopt(n: trio.Nursery, router: Router, passed: list[tuple[bytes, list[int]]]) -> int:
    rx, adopted = Receiver(), 0
    for line, fds in passed:
        for batch in rx.feed(line, fds):
            assert isinstance(batch, Batch)
            for (fd,), r in zip(batch.fds, batch.resumed, strict=True):
                assert isinstance(r, Resumed)
                st = restore_stream(StreamImage(r.session_id, r.header, r.image), router)
                n.start_soon(st.run)
                n.start_soon(pump, adopt_socket(fd), st)
                adopted += 1
    return adopted


async def test_peer_egress_streams_move_to_a_second_router_exactly() -> None:
    cfg = LinkConfig()
    mover = StreamMover(CollectorRegistry())
    passed: list[tuple[bytes, list[int]]] = []

    async def send(line: bytes, fds: Sequence[int]) -> None:
        passed.append((line, [os.dup(fd) for fd in fds]))  # what SCM_RIGHTS does

    with trio.fail_after(30):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            route = Route(f"tcp:127.0.0.1:{acc.port}", tls=False)
            old, new = Router(route, n, config=cfg), Router(route, n, config=cfg)
            ends, freezes = await start_streams(n, old, mover)
            for e in ends:
                await e.wait_more(20_000)
            assert await mover.move(send, 250, trio.current_time() + 5) == N
            assert mover.paths.labels(MOVED)._value.get() == N
            await trio.testing.wait_all_tasks_blocked()
            assert all(f.ended and f.moved for f in freezes)  # cancelled at their waits
            assert not old.streams  # let go (no frame to the far end)
            assert adopt(n, new, passed) == N
            for e in ends:
                await e.wait_more(20_000)  # flowing through the successor's router
            await finish(ends)
            n.cancel_scope.cancel()
    for e in ends:
        assert e.got == e.sent, f"{e.name!r}: {len(e.got)} of {len(e.sent)}"
    assert len(acc.streams) == N  # each session resumed, none continued anew
    assert not acc.failures


async def test_a_failed_send_leaves_peer_egress_streams_running_here() -> None:
    cfg = LinkConfig()
    mover = StreamMover(CollectorRegistry())

    async def broken(line: bytes, fds: Sequence[int]) -> None:
        raise OSError("the successor went away")

    with trio.fail_after(30):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            route = Route(f"tcp:127.0.0.1:{acc.port}", tls=False)
            ends, freezes = await start_streams(n, Router(route, n, config=cfg), mover)
            for e in ends:
                await e.wait_more(20_000)
            assert await mover.move(broken, 250, trio.current_time() + 5) == 0
            assert mover.paths.labels(SEND_FAILED)._value.get() == N
            assert not any(f.moved or f.asked or f.snapped for f in freezes)
            for e in ends:
                await e.wait_more(20_000)  # still flowing here
            await finish(ends)
            n.cancel_scope.cancel()
    for e in ends:
        assert e.got == e.sent, f"{e.name!r}: {len(e.got)} of {len(e.sent)}"
    assert isinstance(acc.streams[0], ResumableStream) and len(acc.streams) == N


async def test_payloads_go_straight_to_the_vm_only_while_not_asked_to_stop() -> None:
    """The link may splice into the VM socket (ResumableStream.deliver_to) only while
    the mover has not asked the pump to stop: the session's state is then the socket's."""
    vm, vm_side = pair()
    st = ResumableStream(b"s" * 16, b"h", opener=True)
    f = PeerFreeze(vm_side, st)
    view, sock = EgressView(f), VmView(f).socket
    view.deliver_to(sock.fileno())
    assert st._direct == (sock.fileno(), None)
    f.ask()
    assert st._direct is None
    f.decide(moved=False)  # called off: straight in again
    assert st._direct == (sock.fileno(), None)
    f.ask()
    f.decide(moved=True)
    assert st._direct is None
    view.deliver_to(None)
    assert st._direct is None and f.direct is None
    vm.socket.close()
    vm_side.socket.close()
