"""A session's image carried to another process (common.proto.link.resume_export):
whatever was written, sent, acknowledged, received and handed on when it was
taken, the restored session resumes with the far end and every byte arrives
once, in order, both ways."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.proto.link.resume import ResumeSession
from common.proto.link.resume_export import NotImageable, SessionImage, image, restore

LIMIT = 4096

ops = st.lists(
    st.tuples(st.sampled_from("wWsxStahk"), st.integers(min_value=1, max_value=700)),
    max_size=60,
)


class Near:
    """The opener's side, as relay.pump_peer sees it: a session, bytes it received
    and has not taken (``held``), taken and not yet handed on (``handing``)."""

    def __init__(self) -> None:
        self.s = ResumeSession(LIMIT)
        self.s.start()
        self.held: deque[bytes] = deque()
        self.handing = 0
        self.out = bytearray()  # what it wrote to the VM
        self.sent = bytearray()  # what the VM gave it

    def take(self, n: int) -> None:
        while self.held and n > 0:
            head = self.held.popleft()
            part, rest = head[:n], head[n:]
            if rest:
                self.held.appendleft(rest)
            self.out += part
            self.handing += len(part)
            n -= len(part)


def _send(src: ResumeSession, dst: ResumeSession, n: int) -> bytes:
    """Up to ``n`` bytes from src to dst; the new bytes dst got."""
    got = bytearray()
    while n > 0 and (c := src.next_chunk(n)) is not None:
        got += dst.on_data(c[0], c[1])
        n -= len(c[1])
    return bytes(got)


def _step(
    near: Near, far: ResumeSession, far_out: bytearray, far_sent: bytearray, op: str, n: int
) -> None:
    s = near.s
    if op == "w":  # the VM writes
        data = bytes([len(near.sent) % 251]) * n
        k = s.write(data)
        near.sent += data[:k]
    elif op == "W":  # the appliance writes
        data = bytes([len(far_sent) % 241]) * n
        k = far.write(data)
        far_sent += data[:k]
    elif op in "sx":  # near -> far; the far end hands on at once and acknowledges
        new = _send(s, far, n)
        far_out += new
        far.hand_on(len(new))
        if (ack := far.ack_due(force=True)) is not None and op == "s":  # (x: ack lost)
            s.on_ack(*ack)
    elif op == "S":  # far -> near
        new = _send(far, s, n)
        if new:
            near.held.append(new)
    elif op == "t":  # the near pump takes bytes and writes them to the VM
        near.take(n)
    elif op == "h":  # ... and hands them on (its next receive_some)
        s.hand_on(near.handing)
        near.handing = 0
    elif op == "a" and (ack := s.ack_due(force=True)) is not None:
        far.on_ack(*ack)


def _drain(a: ResumeSession, b: ResumeSession) -> bytes:
    got = bytearray()
    while (new := _send(a, b, 1 << 20)) or a.has_pending():
        got += new
        b.hand_on(len(new))
        if (ack := b.ack_due(force=True)) is not None:
            a.on_ack(*ack)
        if not new:
            break
    return bytes(got)


@given(ops)
def test_a_restored_session_resumes_exactly(steps: list[tuple[str, int]]) -> None:
    near, far = Near(), ResumeSession(LIMIT)
    far.resume(0)
    far_out, far_sent = bytearray(), bytearray()
    for op, n in steps:
        _step(near, far, far_out, far_sent, op, n)
    img = image(near.s, near.handing, near.held)
    assert img.pending == b"".join(near.held)
    moved = restore(img, LIMIT)
    # the old path is gone; the successor's resume OPEN and the far end's answer
    far.detach()
    far.resume(moved.resume_point()[0])
    moved.resume(far.resume_point()[0])
    out = bytearray(near.out) + img.pending
    moved.hand_on(len(img.pending))
    far_out += _drain(moved, far)
    out += _drain(far, moved)
    assert bytes(far_out) == bytes(near.sent)  # every VM byte once, in order
    assert bytes(out) == bytes(far_sent)  # every appliance byte once, in order


@given(ops, st.integers(min_value=1, max_value=4096))
def test_the_old_path_may_send_more_after_the_image(steps: list[tuple[str, int]], n: int) -> None:
    """Between the image and letting go the old process still transmits what was
    written (nothing new is written: its VM side is stopped): the far end's resume
    point may be beyond what had been sent when the image was taken."""
    near, far = Near(), ResumeSession(LIMIT)
    far.resume(0)
    far_out, far_sent = bytearray(), bytearray()
    for op, k in steps:
        _step(near, far, far_out, far_sent, op, k)
    img = image(near.s, near.handing, near.held)
    late = _send(near.s, far, n)  # the old link's writer, after the image
    far_out += late
    far.hand_on(len(late))
    moved = restore(img, LIMIT)
    far.detach()
    far.resume(moved.resume_point()[0])
    moved.resume(far.resume_point()[0])
    moved.hand_on(len(img.pending))
    far_out += _drain(moved, far)
    assert bytes(far_out) == bytes(near.sent)


@given(ops)
def test_an_image_survives_its_numbers(steps: list[tuple[str, int]]) -> None:
    """What the wire carries rebuilds the same image; a changed number is refused."""
    near, far = Near(), ResumeSession(LIMIT)
    far.resume(0)
    for op, n in steps:
        _step(near, far, bytearray(), bytearray(), op, n)
    img = image(near.s, near.handing, near.held)
    img.check()
    bad = SessionImage(
        img.acked, img.max_sent, img.replay, img.recv_offset + 1, img.handed, img.floor, img.pending
    )
    with pytest.raises(ValueError):
        bad.check()


def test_a_half_closed_session_is_not_imaged() -> None:
    s = ResumeSession(LIMIT)
    s.start()
    s.write(b"x")
    s.write_eof()
    with pytest.raises(NotImageable, match="half_closed"):
        image(s, 0, ())


def test_discarded_bytes_are_not_imaged() -> None:
    s = ResumeSession(8, overflow="discard")
    s.start()
    s.write(b"0123456789abcdef")
    with pytest.raises(NotImageable, match="replay_gap"):
        image(s, 0, ())
