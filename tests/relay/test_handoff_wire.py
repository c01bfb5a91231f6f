"""The live-stream handoff messages (relay.core.handoff_wire): states to JSON lines
and back, in batches that fit SCM_RIGHTS, however the bytes are split."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.handoff_wire import (
    CONTINUED,
    FDS_PER_STREAM,
    Batch,
    Receiver,
    Released,
    StreamState,
    WireCode,
    WireError,
    batches,
    encode_batch,
    per_batch,
)

text = st.text(max_size=40)
count = st.integers(min_value=0, max_value=1 << 62)
states = st.builds(StreamState, text, text, text, text, text, text, text, count, count)


def feed_in_pieces(
    rx: Receiver, wire: list[tuple[bytes, list[int]]], cuts: list[int]
) -> list[Batch | Released]:
    """Feed each message split at ``cuts``; its fds arrive with its first piece."""
    events: list[Batch | Released] = []
    for data, fds in wire:
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        for i, (a, b) in enumerate(itertools.pairwise(points)):
            events += rx.feed(data[a:b], fds if i == 0 else ())
    return events


@given(
    st.lists(states, max_size=40),
    st.integers(min_value=2, max_value=253),
    st.lists(st.integers(min_value=0), max_size=6),
)
def test_batches_round_trip_whatever_the_split(
    all_states: list[StreamState], max_fds: int, cuts: list[int]
) -> None:
    size = per_batch(max_fds)
    wire = []
    next_fd = 100
    for batch in batches(all_states, size):
        assert 0 < len(batch) <= size and FDS_PER_STREAM * len(batch) <= max_fds
        fds = list(range(next_fd, next_fd + FDS_PER_STREAM * len(batch)))
        next_fd += len(fds)
        wire.append((encode_batch(batch), fds))
    wire.append((b"released\n", []))
    rx = Receiver()
    events = feed_in_pieces(rx, wire, cuts)
    assert isinstance(events[-1], Released) and rx.done
    got = [e for e in events[:-1] if isinstance(e, Batch)]
    assert len(got) == len(events) - 1
    assert [s for b in got for s in b.states] == all_states
    flat = [fd for b in got for pair in b.fds for fd in pair]
    assert flat == list(range(100, next_fd)) and rx.held_fds == []


@given(st.binary(max_size=300), st.lists(st.integers(min_value=3, max_value=99), max_size=4))
def test_garbage_is_a_wire_error_or_nothing(data: bytes, fds: list[int]) -> None:
    rx = Receiver(max_line=200)
    try:
        events = rx.feed(data, fds)
    except WireError as e:
        assert isinstance(e.code, WireCode)
        return
    for ev in events:
        assert isinstance(ev, Batch | Released)


def test_a_line_with_fewer_fds_than_streams_is_refused() -> None:
    line = encode_batch([StreamState("s", "r", "tcp", "vm", "", "p", "tcp", 1, 2)])
    rx = Receiver()
    with pytest.raises(WireError) as e:
        rx.feed(line, [5])
    assert e.value.code is WireCode.FD_COUNT and rx.held_fds == [5]  # (the caller closes it)


def test_a_line_without_end_is_bounded() -> None:
    rx = Receiver(max_line=64)
    with pytest.raises(WireError) as e:
        rx.feed(b"{" + b" " * 100)
    assert e.value.code is WireCode.TOO_LONG


@pytest.mark.parametrize(
    ("field", "value"),
    [("a_to_b", -1), ("a_to_b", True), ("b_to_a", "7"), ("sid", 3), ("vm", None)],
)
def test_a_state_with_a_wrong_field_is_refused(field: str, value: object) -> None:
    good = StreamState("s", "r", "tcp", "vm", "", "p", "tcp", 1, 2).to_json()
    line = json.dumps({"streams": [{**good, field: value}], "fds": 2}).encode() + b"\n"
    with pytest.raises(WireError) as e:
        Receiver().feed(line, [7, 8])
    assert e.value.code is WireCode.BAD_STATE


def test_anything_but_a_batch_or_released_is_unexpected() -> None:
    with pytest.raises(WireError) as e:
        Receiver().feed(b'{"keys": []}\n')
    assert e.value.code is WireCode.UNEXPECTED


@given(st.lists(st.tuples(states, st.booleans()), min_size=1, max_size=20), st.lists(count))
def test_continued_streams_pass_one_fd_each(
    items: list[tuple[StreamState, bool]], cuts: list[int]
) -> None:
    """A TLS-egress stream (``CONTINUED``) passes its VM side only; the others both."""
    sts = [s for s, _c in items]
    marks = [CONTINUED if c else None for _s, c in items]
    nfds = sum(1 if c else FDS_PER_STREAM for _s, c in items)
    fds = list(range(100, 100 + nfds))
    events = feed_in_pieces(Receiver(), [(encode_batch(sts, marks), fds)], cuts)
    assert len(events) == 1 and isinstance(events[0], Batch)
    batch = events[0]
    assert batch.states == tuple(sts) and batch.resumed == tuple(marks)
    assert [len(f) for f in batch.fds] == [1 if c else 2 for _s, c in items]
    assert [fd for f in batch.fds for fd in f] == fds


def test_a_continue_that_is_not_true_passes_two_fds() -> None:
    """Only ``"continue": true`` marks a continuation; anything else is a plain stream
    (two fds), and a count that says otherwise is refused."""
    st0 = StreamState("s", "r", "tcp", "vm", "l", "p", "tcp", 1, 2)
    obj = {"streams": [st0.to_json() | {"continue": 1}], "fds": 1}
    with pytest.raises(WireError) as e:
        Receiver().feed(json.dumps(obj).encode() + b"\n", [7])
    assert e.value.code == WireCode.FD_COUNT
