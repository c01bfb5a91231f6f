"""vspc.esx_parking's watcher on its own (connections faked over socketpairs): a
read with a control command is processed before the console reads of its round,
each connection's bytes stay in order, and an ended peer gets its task back."""

from __future__ import annotations

import socket

import trio
import trio.testing

from vspc.esx_owner import ConnectionOwner
from vspc.esx_parking import ParkedReads, Parking

BEGIN = b"\xff\xfa\xe8(seq\xff\xf0"
N = 48  # connections, all ready in one round


class FakeConn(ParkedReads):
    __slots__ = ("name", "seen", "sock")

    def __init__(self, name: str, sock: socket.socket, seen: list[tuple[str, bytes]]) -> None:
        super().__init__()
        self.name, self.sock, self.seen = name, sock, seen

    def read_parked(self, size: int) -> bytes | None:
        try:
            return self.sock.recv(size)
        except BlockingIOError:
            return None

    async def process_parked(self, data: bytes, service: ConnectionOwner) -> bool:
        self.seen.append((self.name, data))
        return True


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


async def test_control_first_in_order_and_ended_unparked(nursery: trio.Nursery) -> None:
    seen: list[tuple[str, bytes]] = []
    spawned: list[ParkedReads] = []
    parking = Parking(None, spawned.append)  # type: ignore[arg-type]  # (fakes: unused)
    peers: dict[str, socket.socket] = {}
    conns: dict[str, FakeConn] = {}
    for i in range(N):
        ours, theirs = _pair()
        conn = conns[f"c{i}"] = FakeConn(f"c{i}", ours, seen)
        peers[f"c{i}"] = theirs
        assert parking.park(conn, ours.fileno())
        conn.parked_fd = ours.fileno()
        theirs.send(b"line-%d" % i)
    peers["c5"].send(BEGIN)  # console bytes, then control, on one connection
    peers["c7"].close()  # bytes, then EOF
    nursery.start_soon(parking.run)
    with trio.fail_after(10):
        while len(seen) < N:
            await trio.testing.wait_all_tasks_blocked()
    assert seen[0] == ("c5", b"line-5" + BEGIN)  # first, with what came before it
    assert sorted(n for n, _ in seen) == sorted(conns)  # each once
    assert spawned == [conns["c7"]] and len(parking) == N - 1
    peers["c1"].send(b"more")
    with trio.fail_after(10):
        while seen[-1] != ("c1", b"more"):
            await trio.testing.wait_all_tasks_blocked()
    for s in peers.values():
        s.close()
