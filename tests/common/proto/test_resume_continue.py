"""Acknowledge only what was handed on; continue a session whose far end restarted.

The model: ``a`` is the opener (the ingress relay, its application the VM), ``b``
the acceptor (a relay that ends sessions, its application the appliance). ``b``
may die at any time, losing everything it held that it had not handed on; ``a``
then continues in a new session (``continuation_point``). The appliance knows
how many bytes of the stream it has (``len(b.got)``) and skips what the new
session sends again; it keeps what it sent and sends again what the new
session says the VM never received. Whatever the schedule: every byte arrives,
exactly once, in order, both ways.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.proto.link.resume import GapError, ResumeSession

# a frame in flight: ("data", off, bytes) / ("ack", off, fin) / ("eof", off)
Msg = tuple[Any, ...]


class Side:
    def __init__(self, s: ResumeSession) -> None:
        self.s = s
        self.held = bytearray()  # received, not yet handed on
        self.skip = 0  # (the appliance behind b) bytes it already has

    def hand_on(self, into: bytearray) -> None:
        into += self.held
        self.s.hand_on(len(self.held))
        self.held.clear()


class World:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.a = Side(ResumeSession(limit, ack_every=5))
        self.b = Side(ResumeSession(limit, ack_every=5))
        self.a.s.start()
        self.b.s.start()
        self.to_b: deque[Msg] = deque()
        self.to_a: deque[Msg] = deque()
        self.vm_sent = bytearray()  # accepted by a's session
        self.app_sent = bytearray()  # accepted by b's session (the appliance's output)
        self.app_got = bytearray()  # what the appliance has, deduplicated
        self.vm_got = bytearray()
        self.pending_app = b""  # the appliance's output not yet taken by b's session

    def write_a(self, data: bytes) -> None:
        self.vm_sent += data[: self.a.s.write(data)]

    def write_b(self, data: bytes) -> None:
        self.app_sent += data[: self.b.s.write(data)]

    def send(self, side: Side, q: deque[Msg], n: int) -> None:
        nxt = side.s.next_chunk(n)
        if nxt is not None:
            q.append(("data", nxt[0], bytes(nxt[1])))

    def recv(self, side: Side, q: deque[Msg], back: deque[Msg]) -> None:
        if not q:
            return
        msg = q.popleft()
        if msg[0] == "data":
            side.held += side.s.on_data(msg[1], msg[2])
        else:
            side.s.on_ack(msg[1], msg[2])
            return
        ack = side.s.ack_due(force=not q)
        if ack is not None:
            back.append(("ack", *ack))

    def cut(self) -> None:
        """The link breaks; both ends resume on a new one."""
        self.to_a.clear()
        self.to_b.clear()
        self.a.s.detach()
        self.b.s.detach()
        a_off, a_fin = self.a.s.resume_point()
        b_off, b_fin = self.b.s.resume_point()
        self.b.s.resume(a_off, a_fin)
        self.a.s.resume(b_off, b_fin)

    def restart_b(self) -> None:
        """b dies (held bytes and its replay buffer gone); a continues the stream."""
        self.to_a.clear()
        self.to_b.clear()
        self.a.s.detach()
        start, recv_start = self.a.s.continuation_point()
        # the appliance: it has len(app_got) bytes of this stream; the new one starts at `start`
        assert start <= len(self.app_got), "a byte was acknowledged before it was handed on"
        self.b = Side(
            ResumeSession(self.limit, ack_every=5, send_start=recv_start, recv_start=start)
        )
        self.b.skip = len(self.app_got) - start
        # the appliance sends again what the VM never received
        self.b.s.resume(recv_start)
        again = bytes(self.app_sent[recv_start:])
        del self.app_sent[recv_start:]
        self.a.s.resume(*self.b.s.resume_point())
        self.pending_app = again + self.pending_app
        self.flush_pending()

    def flush_pending(self) -> None:
        pend = self.pending_app
        if pend:
            n = self.b.s.write(pend)
            self.app_sent += pend[:n]
            self.pending_app = pend[n:]

    def hand_b(self) -> None:
        data = bytearray()
        self.b.hand_on(data)
        k = min(self.b.skip, len(data))
        self.b.skip -= k
        self.app_got += data[k:]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write_a"), st.binary(min_size=1, max_size=40)),
        st.tuples(st.just("write_b"), st.binary(min_size=1, max_size=40)),
        st.tuples(st.sampled_from(["send_a", "send_b"]), st.integers(1, 30)),
        st.tuples(
            st.sampled_from(["recv_a", "recv_b", "hand_a", "hand_b", "cut", "restart_b"]),
            st.just(b""),
        ),
    ),
    max_size=150,
)


def drain(w: World) -> None:
    for _ in range(20_000):
        w.flush_pending()
        w.send(w.a, w.to_b, 64)
        w.send(w.b, w.to_a, 64)
        w.recv(w.b, w.to_b, w.to_a)
        w.recv(w.a, w.to_a, w.to_b)
        w.hand_b()
        w.a.hand_on(w.vm_got)
        idle = not (w.to_a or w.to_b or w.a.s.has_pending() or w.b.s.has_pending())
        if idle and not w.pending_app:
            # the last handed-on bytes are acknowledged when nothing else is queued
            for side, back in ((w.a, w.to_b), (w.b, w.to_a)):
                ack = side.s.ack_due(force=True)
                if ack is not None:
                    back.append(("ack", *ack))
            if not (w.to_a or w.to_b):
                return


def write_b(w: World, arg: Any) -> None:
    w.flush_pending()
    if not w.pending_app:
        w.write_b(arg)


# each generated operation, carried out on the world
APPLY: dict[str, Callable[[World, Any], None]] = {
    "write_a": lambda w, arg: w.write_a(arg),
    "write_b": write_b,
    "send_a": lambda w, arg: w.send(w.a, w.to_b, arg),
    "send_b": lambda w, arg: w.send(w.b, w.to_a, arg),
    "recv_a": lambda w, arg: w.recv(w.a, w.to_a, w.to_b),
    "recv_b": lambda w, arg: w.recv(w.b, w.to_b, w.to_a),
    "hand_a": lambda w, arg: w.a.hand_on(w.vm_got),
    "hand_b": lambda w, arg: w.hand_b(),
    "cut": lambda w, arg: w.cut(),
    "restart_b": lambda w, arg: w.restart_b(),
}


@given(ops, st.integers(8, 120))
@settings(max_examples=400, deadline=None)
def test_restart_of_the_far_end_loses_and_repeats_nothing(
    ops_list: list[tuple[str, Any]], limit: int
) -> None:
    w = World(limit)
    for op, arg in ops_list:
        APPLY[op](w, arg)
    w.cut()
    drain(w)
    assert bytes(w.app_got) == bytes(w.vm_sent)
    assert bytes(w.vm_got) == bytes(w.app_sent)
    assert w.a.s.acked == len(w.vm_sent)


def test_ack_waits_for_hand_on() -> None:
    r = ResumeSession(100, ack_every=1)
    r.start()
    assert bytes(r.on_data(0, b"abcdef")) == b"abcdef"
    assert r.ack_due(force=True) is None  # received, not handed on: nothing acknowledged
    r.hand_on(4)
    assert r.ack_due(force=True) == (4, False)
    r.on_eof(6)
    assert r.ack_due() is None  # the EOF waits for the last bytes
    assert r.resume_point() == (4, False)
    r.hand_on(2)
    assert r.ack_due() == (6, True)
    with pytest.raises(ValueError):
        r.hand_on(1)


def test_resume_point_resends_what_was_not_handed_on() -> None:
    r = ResumeSession(100)
    r.start()
    r.on_data(0, b"0123456789")
    r.hand_on(3)
    assert r.resume_point() == (3, False)
    assert bytes(r.on_data(3, b"3456789xy")) == b"xy"  # held bytes are not delivered twice


def test_continuation_numbers_on() -> None:
    a = ResumeSession(100)
    a.start()
    a.write(b"0123456789")
    a.next_chunk(100)
    a.on_ack(4)
    a.on_data(0, b"abc")
    start, recv_start = a.continuation_point()
    assert (start, recv_start) == (4, 3)
    b = ResumeSession(100, send_start=recv_start, recv_start=start)
    b.resume(recv_start)
    a.detach()
    a.resume(*b.resume_point())
    off, chunk = a.next_chunk(100)  # type: ignore[misc]
    assert (off, bytes(chunk)) == (4, b"456789")
    assert bytes(b.on_data(off, chunk)) == b"456789"
    b.write(b"de")
    assert b.next_chunk(10) == (3, b"de")


def test_continuation_refuses_a_discarded_gap() -> None:
    a = ResumeSession(4, overflow="discard")
    a.start()
    a.write(b"0123456789")
    with pytest.raises(GapError):
        a.continuation_point()
    with pytest.raises(ValueError):
        ResumeSession(4, send_start=-1)


def test_resume_after_a_continuation_does_not_ask_for_what_the_old_peer_sent() -> None:
    a = ResumeSession(100)
    a.start()
    a.on_data(0, b"x")  # from the old peer, not handed on yet
    start, recv_start = a.continuation_point()
    b = ResumeSession(100, send_start=recv_start, recv_start=start)
    b.resume(recv_start)
    a.detach()
    a.resume(*b.resume_point())
    b.detach()
    b.resume(*a.resume_point())  # a reports 1, not 0: b never had byte 0
    assert a.resume_point() == (1, False)
