"""Peer-route streams in the handoff messages (relay.core.handoff_wire): a stream
passed with its session (one fd, its state in the line, its replay and pending
bytes after it) round-trips beside plain ones, however the bytes are split."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.proto.link.resume_export import SessionImage
from relay.core.handoff_wire import (
    Batch,
    Receiver,
    Released,
    Resumed,
    StreamState,
    WireCode,
    WireError,
    encode_batch,
)
from tests.relay.test_handoff_wire import feed_in_pieces, states

offset = st.integers(min_value=0, max_value=1 << 40)


@st.composite
def images(draw: st.DrawFn) -> SessionImage:
    acked = draw(offset)
    replay = draw(st.binary(max_size=300))
    max_sent = acked + draw(st.integers(min_value=0, max_value=len(replay)))
    floor, handed = draw(offset), draw(offset)
    pending = draw(st.binary(max_size=200))
    recv = max(floor, handed + len(pending))
    return SessionImage(acked, max_sent, replay, recv, recv - len(pending), floor, pending)


resumed = st.builds(Resumed, st.binary(min_size=16, max_size=16), st.binary(max_size=80), images())


@given(
    st.lists(st.tuples(states, st.one_of(st.none(), resumed)), max_size=20),
    st.lists(st.integers(min_value=0), max_size=8),
)
def test_resumed_streams_round_trip_whatever_the_split(
    items: list[tuple[StreamState, Resumed | None]], cuts: list[int]
) -> None:
    wire, fd = [], 100
    for part in (items[:7], items[7:]):
        nfds = sum(1 if r is not None else 2 for _s, r in part)
        data = encode_batch([s for s, _r in part], [r for _s, r in part])
        wire.append((data, list(range(fd, fd + nfds))))
        fd += nfds
    wire.append((b"released\n", []))
    rx = Receiver()
    events = feed_in_pieces(rx, wire, cuts)
    assert isinstance(events[-1], Released) and rx.done
    got = [e for e in events if isinstance(e, Batch)]
    assert [(s, r) for b in got for s, r in zip(b.states, b.resumed, strict=True)] == items
    for b in got:
        assert [len(f) for f in b.fds] == [1 if r is not None else 2 for r in b.resumed]
    assert [x for b in got for f in b.fds for x in f] == list(range(100, fd))


def _line(resume: dict[str, object]) -> bytes:
    good = StreamState("s", "r", "tcp", "vm", "", "p", "peer", 1, 2).to_json()
    return json.dumps({"streams": [{**good, "resume": resume}], "fds": 1}).encode() + b"\n"


GOOD = Resumed(b"s" * 16, b"h", SessionImage(10, 12, b"abcd", 7, 5, 0, b"xy")).to_json()


@pytest.mark.parametrize(
    "resume",
    [
        {**GOOD, "handed": 6},  # handed + pending != received
        {**GOOD, "max_sent": 20},  # sent beyond what was written
        {**GOOD, "acked": -1},
        {**GOOD, "replay": True},
        {**GOOD, "session": "zz"},
        {k: v for k, v in GOOD.items() if k != "header"},
        [1, 2],
    ],
)
def test_a_resume_state_that_does_not_add_up_is_refused(resume: object) -> None:
    rx = Receiver()
    with pytest.raises(WireError) as e:
        rx.feed(_line(resume) + b"abcdxy", [7])  # type: ignore[arg-type]
    assert e.value.code is WireCode.BAD_STATE


def test_the_bytes_after_a_line_are_bounded() -> None:
    rx = Receiver(max_bytes=5)
    with pytest.raises(WireError) as e:
        rx.feed(_line(GOOD), [7])
    assert e.value.code is WireCode.TOO_BIG


def test_a_batch_waits_for_its_bytes() -> None:
    rx = Receiver()
    assert rx.feed(_line(GOOD) + b"abc", [7]) == []
    (batch,) = rx.feed(b"dxy")
    assert isinstance(batch, Batch) and batch.fds == ((7,),)
    r = batch.resumed[0]
    assert isinstance(r, Resumed) and r.image.replay == b"abcd" and r.image.pending == b"xy"
