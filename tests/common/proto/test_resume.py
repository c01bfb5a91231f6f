"""The resume state machine: cut the path anywhere, bytes arrive exactly once, in order."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.proto.link.resume import (
    GapError,
    ResumeProtocolError,
    ResumeSession,
    SessionClosedError,
)

# a frame in flight: ("data", off, bytes) / ("ack", off, fin) / ("eof", off)
Msg = tuple[Any, ...]


class End:
    def __init__(self, limit: int, overflow: str = "block") -> None:
        self.s = ResumeSession(limit, overflow=overflow, ack_every=7)  # type: ignore[arg-type]
        self.written = bytearray()  # everything the application wrote (accepted)
        self.got = bytearray()  # everything delivered to the application
        self.eof_got = False


class Path:
    """One attachment: two FIFO pipes carrying ('data', off, bytes),
    ('ack', off, fin) and ('eof', off)."""

    def __init__(self) -> None:
        self.to_b: deque[Msg] = deque()
        self.to_a: deque[Msg] = deque()


def pump(src: End, q: deque[Msg], max_bytes: int) -> None:
    nxt = src.s.next_chunk(max_bytes)
    if nxt is not None:
        q.append(("data", nxt[0], bytes(nxt[1])))
        return
    eof = src.s.take_eof()
    if eof is not None:
        q.append(("eof", eof))


def deliver(dst: End, q: deque[Msg], back: deque[Msg]) -> None:
    if not q:
        return
    msg = q.popleft()
    if msg[0] == "data":
        new = dst.s.on_data(msg[1], msg[2])
        dst.got += new
        dst.s.hand_on(len(new))  # delivered at once (test_resume_continue delays it)
    elif msg[0] == "eof":
        dst.s.on_eof(msg[1])
        dst.eof_got = True
    else:
        dst.s.on_ack(msg[1], msg[2])
        return
    ack = dst.s.ack_due(force=len(q) == 0)
    if ack is not None:
        back.append(("ack", *ack))


def reconnect(a: End, b: End) -> Path:
    """Opener a reports its offset in OPEN; acceptor b answers with its own."""
    a.s.detach()
    b.s.detach()
    a_off, a_fin = a.s.resume_point()
    b_off, b_fin = b.s.resume_point()
    b.s.resume(a_off, a_fin)
    a.s.resume(b_off, b_fin)
    return Path()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write_a"), st.binary(min_size=1, max_size=50)),
        st.tuples(st.just("write_b"), st.binary(min_size=1, max_size=50)),
        st.tuples(st.just("send_a"), st.integers(1, 40)),
        st.tuples(st.just("send_b"), st.integers(1, 40)),
        st.tuples(st.just("recv_b"), st.just(0)),
        st.tuples(st.just("recv_a"), st.just(0)),
        st.tuples(st.just("cut"), st.just(0)),
        st.tuples(st.just("eof_a"), st.just(0)),
    ),
    max_size=120,
)


def apply(op: str, arg: Any, a: End, b: End, p: Path) -> Path:
    """Carry out one generated operation; returns the path (a new one after a cut)."""
    if op == "write_a" and not a.s.eof_written:
        n = a.s.write(arg)
        a.written += arg[:n]
    elif op == "write_b":
        n = b.s.write(arg)
        b.written += arg[:n]
    elif op == "send_a":
        pump(a, p.to_b, arg)
    elif op == "send_b":
        pump(b, p.to_a, arg)
    elif op == "recv_b":
        deliver(b, p.to_b, p.to_a)
    elif op == "recv_a":
        deliver(a, p.to_a, p.to_b)
    elif op == "cut":
        return reconnect(a, b)  # in-flight frames are lost
    elif op == "eof_a":
        a.s.write_eof()
    return p


def drain(a: End, b: End) -> None:
    """Finally: a clean path, drain everything."""
    p = reconnect(a, b)
    for _ in range(10_000):
        pump(a, p.to_b, 64)
        pump(b, p.to_a, 64)
        deliver(b, p.to_b, p.to_a)
        deliver(a, p.to_a, p.to_b)
        if not (p.to_a or p.to_b or a.s.has_pending() or b.s.has_pending()):
            break


def run(ops_list: list[tuple[str, Any]], limit: int, overflow: str) -> tuple[End, End, bool]:
    a, b = End(limit, overflow), End(limit, overflow)
    a.s.start()
    b.s.start()
    p = Path()
    gap = False
    try:
        for op, arg in ops_list:
            p = apply(op, arg, a, b, p)
        drain(a, b)
    except GapError:
        gap = True
    return a, b, gap


@given(ops, st.integers(8, 200))
@settings(max_examples=400, deadline=None)
def test_block_mode_never_loses_or_duplicates(ops_list: list[tuple[str, Any]], limit: int) -> None:
    a, b, gap = run(ops_list, limit, "block")
    assert not gap
    assert bytes(b.got) == bytes(a.written)
    assert bytes(a.got) == bytes(b.written)
    assert a.s.buffered <= limit and b.s.buffered <= limit
    if a.s.eof_written:
        assert b.eof_got and a.s.eof_acked


@given(ops, st.integers(8, 200))
@settings(max_examples=400, deadline=None)
def test_discard_mode_gap_is_explicit(ops_list: list[tuple[str, Any]], limit: int) -> None:
    a, b, gap = run(ops_list, limit, "discard")
    assert a.s.buffered <= limit and b.s.buffered <= limit
    # whatever arrived is an exact prefix of what was written: never a hole, never a repeat
    assert bytes(a.written).startswith(bytes(b.got))
    assert bytes(b.written).startswith(bytes(a.got))
    if not gap:
        assert bytes(b.got) == bytes(a.written)
        assert bytes(a.got) == bytes(b.written)
    if a.s.discarded == 0 and b.s.discarded == 0:
        assert not gap


def test_gap_on_resume_after_overflow() -> None:
    s = ResumeSession(10, overflow="discard")
    s.start()
    s.write(b"0123456789")
    assert s.next_chunk(100) == (0, b"0123456789")
    s.write(b"abcde")  # drops 5 sent-but-unacknowledged bytes
    assert s.discarded == 5 and s.buffered == 10
    s.detach()
    with pytest.raises(GapError):
        s.resume(3)
    s2 = ResumeSession(10, overflow="discard")
    s2.start()
    s2.write(b"0123456789")
    s2.next_chunk(100)
    s2.write(b"abcde")
    s2.detach()
    s2.resume(7)  # the peer already has what was dropped: fine
    out = b""
    while (c := s2.next_chunk(100)) is not None:
        out += bytes(c[1])
    assert out == b"789abcde"


def test_block_mode_backpressure() -> None:
    s = ResumeSession(10)
    s.start()
    assert s.write(b"x" * 25) == 10
    assert s.room() == 0 and s.write(b"y") == 0
    off, chunk = s.next_chunk(4)  # type: ignore[misc]
    assert (off, bytes(chunk)) == (0, b"xxxx")
    assert s.on_ack(4) == 4
    assert s.room() == 4


def test_peer_inconsistency_detected() -> None:
    s = ResumeSession(100)
    s.start()
    s.write(b"hello")
    s.next_chunk(2)
    with pytest.raises(ResumeProtocolError):
        s.on_ack(3)  # only 2 sent
    with pytest.raises(ResumeProtocolError):
        s.resume(4)
    r = ResumeSession(100)
    with pytest.raises(ResumeProtocolError):
        r.on_data(5, b"x")  # skipped bytes
    assert r.on_data(0, b"abc") == b"abc"
    assert bytes(r.on_data(1, b"bcde")) == b"de"  # overlap trimmed
    assert r.on_data(0, b"ab") == b""  # duplicate dropped
    with pytest.raises(ResumeProtocolError):
        r.on_eof(3)
    r.on_eof(5)
    with pytest.raises(ResumeProtocolError):
        r.on_data(5, b"z")
    s.write_eof()
    with pytest.raises(SessionClosedError):
        s.write(b"more")


def eof_received_then_cut() -> tuple[ResumeSession, ResumeSession]:
    """Sender ``a`` and receiver ``b``: ten bytes and the EOF received, four of them
    handed on downstream (six still held), then the path cut at both ends."""
    a, b = ResumeSession(100), ResumeSession(100)
    a.start()
    b.start()
    a.write(b"0123456789")
    a.write_eof()
    off, chunk = a.next_chunk(100)  # type: ignore[misc]
    assert b.on_data(off, chunk) == b"0123456789"
    assert b.on_eof(a.take_eof()) is True  # type: ignore[arg-type]
    b.hand_on(4)
    a.detach()
    b.detach()
    return a, b


def test_replay_after_eof_of_bytes_not_yet_handed_on_is_trimmed() -> None:
    """The EOF arrived while the application still held bytes; the path is cut, and
    the sender replays from what was handed on: the replayed bytes (and EOF) are
    duplicates to drop, not "data after EOF"."""
    a, b = eof_received_then_cut()
    b_off, b_fin = b.resume_point()
    assert (b_off, b_fin) == (4, False)
    a.resume(b_off, b_fin)
    off, chunk = a.next_chunk(100)  # type: ignore[misc]
    assert (off, bytes(chunk)) == (4, b"456789")
    assert b.on_data(off, chunk) == b""  # already held: trimmed
    assert b.on_eof(a.take_eof()) is False  # type: ignore[arg-type]
    b.hand_on(6)
    assert b.ack_due() == (10, True)
    with pytest.raises(ResumeProtocolError):
        b.on_data(10, b"z")  # really new bytes after the EOF stay an error


def test_eof_acknowledged_after_resume_before_it_is_sent_again() -> None:
    """The EOF arrived on the old path while bytes were still held; after the resume
    the receiver hands them on and acknowledges the EOF before the sender sent it
    again on the new path: a valid acknowledgement (the EOF was sent before)."""
    a, b = eof_received_then_cut()
    a.resume(*b.resume_point())
    b.hand_on(6)  # (the application writes the rest out meanwhile)
    assert b.ack_due() == (10, True)
    a.on_ack(10, True)
    assert a.eof_acked and a.buffered == 0
    assert a.next_chunk(100) is None and a.take_eof() is None  # nothing left to send
    c = ResumeSession(100)
    c.start()
    c.write(b"abc")
    c.write_eof()
    c.next_chunk(100)
    with pytest.raises(ResumeProtocolError):
        c.on_ack(3, True)  # an EOF never sent cannot be acknowledged
