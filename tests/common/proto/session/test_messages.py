"""common.proto.session.messages: every message survives the codec; garbage never crashes it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.proto.session.messages import (
    MAX_RECORD,
    OPTIONAL,
    Ack,
    Close,
    DataMsg,
    EofMsg,
    ErrorCode,
    ExecSpec,
    Exit,
    ExitStatus,
    GapMsg,
    Message,
    MessageError,
    OpenAttach,
    Opened,
    OpenExec,
    OpenFailed,
    Resize,
    Resume,
    Signal,
    Stream,
    StreamMark,
    decode,
    encode,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, (1 << 64) - 1)
text = st.text(max_size=20)
data_stream = st.sampled_from([Stream.STDIN, Stream.STDOUT, Stream.STDERR, Stream.TTY])

specs = st.builds(
    ExecSpec,
    argv=st.lists(text, max_size=5).map(tuple),
    env=st.lists(st.tuples(text, text), max_size=5).map(tuple),
    cwd=text,
    user=text,
    tty=st.booleans(),
    rows=u16,
    cols=u16,
    timeout_ms=u32,
)
statuses = st.one_of(
    st.builds(ExitStatus, code=st.integers(-(1 << 31), (1 << 31) - 1), timed_out=st.booleans()),
    st.builds(ExitStatus, signal=st.integers(1, (1 << 31) - 1), timed_out=st.booleans()),
)
marks = st.builds(StreamMark, ch=u32, stream=st.sampled_from(Stream), offset=u64, eof=st.booleans())
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Resume,
        version=u16,
        caps=u32,
        session_id=st.binary(min_size=16, max_size=16),
        ctl_received=u64,
        marks=st.lists(marks, max_size=10).map(tuple),
    ),
    st.builds(OpenExec, seq=u64, ch=u32, spec=specs),
    st.builds(OpenAttach, seq=u64, ch=u32, tty=st.booleans(), rows=u16, cols=u16),
    st.builds(Opened, seq=u64, ch=u32),
    st.builds(OpenFailed, seq=u64, ch=u32, reason=text),
    st.builds(Resize, seq=u64, ch=u32, rows=u16, cols=u16),
    st.builds(Signal, seq=u64, ch=u32, signo=u8),
    st.builds(Exit, seq=u64, ch=u32, status=statuses),
    st.builds(Close, seq=u64, ch=u32),
    st.builds(DataMsg, ch=u32, stream=data_stream, offset=u64, data=st.binary(max_size=64)),
    st.builds(EofMsg, ch=u32, stream=data_stream, offset=u64),
    st.tuples(u32, data_stream, u64, st.integers(1, 1000)).map(
        lambda t: GapMsg(t[0], t[1], t[2] // 2, t[2] // 2 + t[3])
    ),
    st.builds(Ack, ch=u32, stream=st.sampled_from(Stream), offset=u64, eof=st.booleans()),
)


@given(messages)
def test_every_message_round_trips(msg: Message) -> None:
    assert decode(encode(msg)) == msg


@given(messages)
def test_a_cut_or_padded_message_is_refused_with_a_code(msg: Message) -> None:
    record = encode(msg)
    if not isinstance(msg, DataMsg):  # a DATA's payload is the rest of the record
        for n in range(len(record)):
            if isinstance(msg, OpenAttach) and n == len(record) - 4:
                continue  # an older peer's OPEN_ATTACH, without the size (test_attach_size)
            with pytest.raises(MessageError):
                decode(record[:n])
        with pytest.raises(MessageError) as e:
            decode(record + b"\0")
        assert e.value.code is ErrorCode.TRAILING


@given(st.binary(max_size=200))
def test_garbage_gives_a_message_none_or_a_coded_error(garbage: bytes) -> None:
    try:
        decode(garbage)
    except MessageError as e:
        assert isinstance(e.code, ErrorCode)


@given(messages, st.integers(0, 200), u8)
def test_one_flipped_byte_never_crashes_the_decoder(msg: Message, at: int, value: int) -> None:
    record = bytearray(encode(msg))
    record[at % len(record)] = value
    try:
        decode(bytes(record))
    except MessageError:
        pass


def test_an_unknown_type_is_ignored_only_when_flagged_optional() -> None:
    assert decode(bytes([0x7E, OPTIONAL]) + b"from a newer peer") is None
    with pytest.raises(MessageError) as e:
        decode(bytes([0x7E, 0]) + b"from a newer peer")
    assert e.value.code is ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize(
    ("record", "code"),
    [
        (bytes([0x21, 0]) + (1).to_bytes(4, "big") + bytes([9]) + bytes(8), ErrorCode.BAD_FIELD),
        (bytes([0x20, 0]) + (1).to_bytes(4, "big") + bytes([0]) + bytes(8), ErrorCode.BAD_FIELD),
        (bytes([0x22, 0, 0, 0, 0, 1, 1]) + (5).to_bytes(8, "big") * 2, ErrorCode.BAD_FIELD),
        (bytes([0x16, 0]) + bytes(12) + bytes([1]) + bytes(4), ErrorCode.BAD_FIELD),
        (bytes([0x11, 0]) + bytes(12) + bytes([2]), ErrorCode.BAD_FIELD),
        (bytes([0x12]), ErrorCode.TRUNCATED),
        (bytes([0x20, 0]) + bytes(MAX_RECORD), ErrorCode.TOO_LARGE),
    ],
    ids=["bad-stream", "data-on-control", "empty-gap", "signal-0", "flag-2", "short", "huge"],
)
def test_bad_fields_carry_their_code(record: bytes, code: ErrorCode) -> None:
    with pytest.raises(MessageError) as e:
        decode(record)
    assert e.value.code is code


def test_what_cannot_go_on_the_wire_is_refused_at_encode() -> None:
    with pytest.raises(ValueError, match="exceeds a record"):
        encode(OpenExec(0, 1, ExecSpec(argv=("x" * 60_000, "y" * 10_000))))
    with pytest.raises(ValueError, match="out of range"):
        encode(Resize(0, 1, rows=70_000, cols=1))
    with pytest.raises(ValueError, match="code or a signal"):
        encode(Exit(0, 1, ExitStatus()))
    assert len(encode(DataMsg(1, Stream.STDOUT, 0, bytes(MAX_RECORD - 15)))) == MAX_RECORD


def test_timed_out_goes_only_to_a_peer_offering_it_and_old_records_still_decode() -> None:
    late = Exit(3, 1, ExitStatus(signal=9, timed_out=True))
    assert decode(encode(late)) == late
    assert decode(encode(late, caps=0)) == Exit(3, 1, ExitStatus(signal=9))
    old = (
        bytes([0x16, 0])
        + (3).to_bytes(8, "big")
        + (1).to_bytes(4, "big")
        + b"\x01"
        + (9).to_bytes(4, "big")
    )
    assert decode(old) == Exit(3, 1, ExitStatus(signal=9))
    with pytest.raises(MessageError) as e:
        decode(old[:14] + b"\x05" + old[15:])
    assert e.value.code is ErrorCode.BAD_FIELD
