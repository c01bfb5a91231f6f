"""common.proto.session: tampered, replayed, reordered, truncated and oversize input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.proto.session.errors import SecureError
from common.proto.session.records import MAX_FRAME, MAX_RECORD, FrameType
from common.proto.session.secure import Event, Record, Refused, Role, SecureChannel, State
from common.proto.session.sync import MAGIC
from tests.common.proto.session.test_secure import SECRET, established, pair, seeded


def records_of(events: list[Event]) -> list[bytes]:
    return [e.payload for e in events if isinstance(e, Record)]


def refusals(events: list[Event]) -> list[SecureError]:
    return [e.code for e in events if isinstance(e, Refused)]


def up() -> tuple[SecureChannel, SecureChannel]:
    i, r = pair()
    established(i, r)
    return i, r


def sealed(i: SecureChannel, *payloads: bytes) -> list[bytes]:
    out = []
    for payload in payloads:
        i.send_record(payload)
        out.append(i.data_to_send())
    return out


def test_every_single_bit_flip_of_a_record_is_refused() -> None:
    # pair() seeds both ephemerals: each up() has the same keys, so the frame fits each r
    i, _ = up()
    (frame,) = sealed(i, b"ls -l")
    for bit in range(len(frame) * 8):
        _, r = up()
        flipped = bytearray(frame)
        flipped[bit // 8] ^= 1 << (bit % 8)
        events = r.receive_data(bytes(flipped)) + r.receive_eof()
        assert records_of(events) == [], bit
        assert len(refusals(events)) == 1 and r.state is State.CLOSED, bit


def test_a_tampered_record_after_good_ones_keeps_the_good_ones_only() -> None:
    i, r = up()
    first, second, third = sealed(i, b"one", b"two", b"three")
    bad = bytearray(second)
    bad[-1] ^= 0x80
    events = r.receive_data(first + bytes(bad) + third)
    assert records_of(events) == [b"one"]
    assert refusals(events) == [SecureError.TAMPERED]
    assert r.data_to_send() == b"\x15\x00\x00\x00\x01\x05"  # ALERT(TAMPERED) to the peer
    assert refusals(i.receive_data(b"\x15\x00\x00\x00\x01\x05")) == [SecureError.TAMPERED]


def test_a_replayed_record_is_refused() -> None:
    i, r = up()
    first, second = sealed(i, b"rm -rf /tmp/x", b"next")
    events = r.receive_data(first + first + second)
    assert records_of(events) == [b"rm -rf /tmp/x"]
    assert refusals(events) == [SecureError.REPLAYED]


def test_reordered_records_are_refused() -> None:
    i, r = up()
    first, second = sealed(i, b"first", b"second")
    events = r.receive_data(second + first)
    assert records_of(events) == [] and refusals(events) == [SecureError.REORDERED]


def test_a_record_from_another_connection_does_not_open() -> None:
    i, _ = up()
    (old,) = sealed(i, b"yesterday's keystrokes")
    i2 = SecureChannel(Role.INITIATOR, [SECRET], random_bytes=seeded(7))
    r2 = SecureChannel(Role.RESPONDER, [SECRET], random_bytes=seeded(8))
    i2.start()
    established(i2, r2)
    events = r2.receive_data(old)
    assert records_of(events) == [] and refusals(events) == [SecureError.TAMPERED]


def test_bytes_dropped_inside_a_record_deliver_nothing_false() -> None:
    i, r = up()
    first, second, third = sealed(i, b"a" * 40, b"b" * 40, b"c" * 40)
    events = r.receive_data(first + second[:20] + second[21:] + third)
    assert records_of(events) == [b"a" * 40]
    assert refusals(events) == [SecureError.TAMPERED]


@settings(max_examples=80, deadline=None)
@given(payloads=st.lists(st.binary(max_size=100), min_size=1, max_size=5), cut=st.integers(0))
def test_a_truncated_stream_delivers_a_prefix_and_nothing_false(
    payloads: list[bytes], cut: int
) -> None:
    i, r = up()
    frames = sealed(i, *payloads)
    stream = b"".join(frames)
    cut %= len(stream) + 1
    events = r.receive_data(stream[:cut]) + r.receive_eof()
    got = records_of(events)
    assert got == payloads[: len(got)]
    boundaries = {sum(len(f) for f in frames[:n]) for n in range(len(frames) + 1)}
    if cut in boundaries:
        assert refusals(events) == [] and len(got) == [*sorted(boundaries)].index(cut)
    else:
        assert refusals(events) == [SecureError.TRUNCATED]
    assert r.state is State.CLOSED


def test_eof_during_the_handshake_is_truncated() -> None:
    i, r = pair()
    r.receive_data(i.data_to_send()[:20])
    assert refusals(r.receive_eof()) == [SecureError.TRUNCATED]


def test_record_size_limit() -> None:
    i, r = up()
    i.send_record(b"\x00" * MAX_RECORD)
    with pytest.raises(ValueError):
        i.send_record(b"\x00" * (MAX_RECORD + 1))
    assert records_of(r.receive_data(i.data_to_send())) == [b"\x00" * MAX_RECORD]
    # a forged header announcing more is refused before any of its body is held
    events = r.receive_data(struct.pack("!BI", FrameType.RECORD, 8 + MAX_RECORD + 17))
    assert refusals(events) == [SecureError.OVERSIZE]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x42\x00\x00\x00\x01x", SecureError.MALFORMED),  # unknown type
        (b"\x01\x00\x00\x00\x10" + b"i" * 16, SecureError.MALFORMED),  # INIT once established
        (b"\x17\x00\x00\x00\x04abcd", SecureError.MALFORMED),  # RECORD shorter than a tag
        (b"\x15\x00\x00\x00\x01\x63", SecureError.MALFORMED),  # ALERT with an unknown code
        (b"\x03\xff\xff\xff\xff", SecureError.OVERSIZE),
    ],
)
def test_frames_out_of_grammar_close_the_connection(frame: bytes, code: SecureError) -> None:
    _, r = up()
    assert refusals(r.receive_data(frame)) == [code]
    assert r.state is State.CLOSED


def test_a_tampered_handshake_is_auth_on_both_ends() -> None:
    for offset in (len(MAGIC) + 5, len(MAGIC) + 40, -1):  # e, sealed hello, tag
        i, r = pair()
        init = bytearray(i.data_to_send())
        init[offset] ^= 0x01
        got_r = r.receive_data(bytes(init))
        got_i = i.receive_data(r.data_to_send())
        assert refusals(got_r) == refusals(got_i) == [SecureError.AUTH]


def test_a_replayed_init_never_establishes() -> None:
    i, r = pair()
    init = i.data_to_send()
    r.receive_data(init)
    i.receive_data(r.data_to_send())
    finish = i.data_to_send()
    assert [type(e).__name__ for e in r.receive_data(finish)] == ["Established"]
    # an attacker replays both to another responder: it answers INIT (it cannot tell
    # yet), but the old FINISH does not fit its fresh ephemeral, and it never establishes
    r2 = SecureChannel(Role.RESPONDER, [SECRET], random_bytes=seeded(3))
    assert r2.receive_data(init) == [] and r2.state is State.HANDSHAKING
    assert refusals(r2.receive_data(finish)) == [SecureError.AUTH]


@settings(max_examples=100, deadline=None)
@given(garbage=st.lists(st.binary(max_size=200), max_size=20), established_first=st.booleans())
def test_garbage_never_crashes_nor_grows(garbage: list[bytes], established_first: bool) -> None:
    if established_first:
        _, r = up()
    else:
        r = SecureChannel(Role.RESPONDER, [SECRET])
        r.receive_data(MAGIC)
    for chunk in garbage:
        events = r.receive_data(chunk)
        assert records_of(events) == []
        assert r._reader.partial <= MAX_FRAME
    assert r.state in (State.HANDSHAKING, State.ESTABLISHED, State.CLOSED)


def test_after_refusal_nothing_is_read() -> None:
    i, r = up()
    (good,) = sealed(i, b"late")
    r.receive_data(b"\x42\x00\x00\x00\x00")
    assert r.receive_data(good) == [] and r.receive_eof() == []
    with pytest.raises(Exception, match="send_record"):
        r.send_record(b"x")


def _flight(n: int) -> tuple[bytes, SecureChannel]:
    """Handshake message ``n`` (0 INIT, 1 RESP, 2 FINISH) and a fresh end to receive it."""
    i, r = pair()
    flights = [i.data_to_send()]
    r.receive_data(flights[0])
    flights.append(r.data_to_send())
    i.receive_data(flights[1])
    flights.append(i.data_to_send())
    fresh_i, fresh_r = pair()  # same seeds: in the same state as i and r were
    if n >= 1:
        fresh_r.receive_data(flights[0])
    if n == 2:
        fresh_i.receive_data(fresh_r.data_to_send())
    return flights[n], (fresh_i if n == 1 else fresh_r)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_every_single_bit_flip_of_a_handshake_message_is_refused(n: int) -> None:
    message, _ = _flight(n)
    for bit in range(len(message) * 8):
        _, end = _flight(n)
        flipped = bytearray(message)
        flipped[bit // 8] ^= 1 << (bit % 8)
        events = end.receive_data(bytes(flipped)) + end.receive_eof()
        assert [type(e).__name__ for e in events] == ["Refused"], (n, bit, events)
