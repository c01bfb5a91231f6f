"""Telnet codec: parser events, encoder, chunking invariance, hostile input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from common.proto.telnet import codec
from common.proto.telnet.codec import (
    AYT,
    BINARY,
    DO,
    IAC,
    NOP,
    SB,
    SE,
    VMWARE_EXT,
    WILL,
    Command,
    Data,
    Event,
    Negotiate,
    ProtocolError,
    Subnegotiation,
    TelnetParser,
)


def merge(events: list[Event]) -> list[Event]:
    """Merge consecutive Data events (what a single big feed would give)."""
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, Data):
            if not ev.data:
                continue
            if out and isinstance(out[-1], Data):
                prev = out.pop()
                assert isinstance(prev, Data)
                ev = Data(prev.data + ev.data)
        out.append(ev)
    return out


def feed_chunks(chunks: list[bytes], parser: TelnetParser | None = None) -> list[Event]:
    p = parser or TelnetParser()
    events: list[Event] = []
    for c in chunks:
        events.extend(p.feed(c))
    return events


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, prev = [], 0
    for p in points:
        chunks.append(data[prev:p])
        prev = p
    chunks.append(data[prev:])
    return chunks


# --- examples -----------------------------------------------------------------


def test_plain_data_is_one_event_and_8bit_clean() -> None:
    data = bytes(b for b in range(256) if b != IAC) * 3 + b"\r\n\r\x00\x11"
    assert TelnetParser().feed(data) == [Data(data)]


def test_doubled_iac_is_data_and_merged() -> None:
    wire = b"a\xff\xffb\xff\xff\xff\xffc"
    assert TelnetParser().feed(wire) == [Data(b"a\xffb\xff\xffc")]


def test_fast_paths_text_is_the_same_object_binary_is_undoubled() -> None:
    text = b"[    1.000000] systemd[1]: Started sshd.service\r\n" * 5000
    (ev,) = TelnetParser().feed(text)
    assert isinstance(ev, Data) and ev.data is text  # no copy
    raw = bytes(range(256)) * 100
    assert TelnetParser().feed(codec.escape(raw)) == [Data(raw)]


def test_doubled_and_lone_iac_mixed_in_one_chunk() -> None:
    # An odd run of 0xFF: a data 0xFF then a command; a trailing lone IAC waits.
    wire = b"x\xff\xff\xff\xf1y\xff\xff\xff"
    p = TelnetParser()
    assert p.feed(wire) == [Data(b"x\xff"), Command(NOP), Data(b"y\xff")]
    assert p.feed(b"\xff\xff\xffz") == [Data(b"\xff\xffz")]


def test_commands_negotiation_subnegotiation_in_order() -> None:
    wire = (
        b"hi"
        + bytes([IAC, NOP])
        + bytes([IAC, WILL, BINARY])
        + b"x"
        + bytes([IAC, SB, VMWARE_EXT, 0, 1, 2, IAC, IAC, 3, IAC, SE])
        + bytes([IAC, AYT])
        + b"tail"
    )
    assert TelnetParser().feed(wire) == [
        Data(b"hi"),
        Command(NOP),
        Negotiate(WILL, BINARY),
        Data(b"x"),
        Subnegotiation(VMWARE_EXT, b"\x00\x01\x02\xff\x03"),
        Command(AYT),
        Data(b"tail"),
    ]


def test_iac_split_from_its_command_across_feeds() -> None:
    p = TelnetParser()
    assert p.feed(b"ab\xff") == [Data(b"ab")]
    assert p.feed(b"\xff") == [Data(b"\xff")]
    assert p.feed(b"\xff") == []
    assert p.feed(bytes([DO])) == []
    assert p.feed(bytes([BINARY])) == [Negotiate(DO, BINARY)]


def test_stray_se_is_a_command() -> None:
    assert TelnetParser().feed(bytes([IAC, SE])) == [Command(SE)]


def test_overlong_subnegotiation_is_a_protocol_error_and_bounded() -> None:
    p = TelnetParser(max_subnegotiation=16)
    events = p.feed(bytes([IAC, SB, VMWARE_EXT]) + b"x" * 10)
    assert events == []
    events = p.feed(b"y" * 1000)
    assert len(events) == 1 and isinstance(events[0], ProtocolError)
    assert p.buffered == 0
    # the rest of the bad SB is discarded; parsing resumes after IAC SE
    assert p.feed(b"z" * 100_000 + b"\xff\xffq" + bytes([IAC, SE]) + b"ok") == [Data(b"ok")]
    assert p.buffered == 0


def test_overlong_by_doubled_iac() -> None:
    p = TelnetParser(max_subnegotiation=2)
    events = p.feed(bytes([IAC, SB, 5]) + b"\xff\xff" * 3 + bytes([IAC, SE]) + b"a")
    assert [type(e) for e in events] == [ProtocolError, Data]
    assert events[1] == Data(b"a")


def test_exactly_max_subnegotiation_is_fine() -> None:
    p = TelnetParser(max_subnegotiation=4)
    assert p.feed(codec.subnegotiation(7, b"\xff\x00\xff\x01")) == [
        Subnegotiation(7, b"\xff\x00\xff\x01")
    ]


def test_iac_command_inside_subnegotiation() -> None:
    p = TelnetParser()
    events = p.feed(bytes([IAC, SB, 24, 1, 2, IAC, WILL, BINARY]) + b"d")
    assert [type(e) for e in events] == [ProtocolError, Negotiate, Data]
    assert events[1] == Negotiate(WILL, BINARY)


def test_encoder() -> None:
    assert codec.escape(b"a\xffb") == b"a\xff\xffb"
    assert codec.negotiate(WILL, 232) == b"\xff\xfb\xe8"
    assert codec.command(NOP) == b"\xff\xf1"
    assert codec.subnegotiation(232, b"\x28\xff") == b"\xff\xfa\xe8\x28\xff\xff\xff\xf0"


def test_encoder_rejects_nonsense() -> None:
    import pytest

    with pytest.raises(ValueError):
        codec.negotiate(SB, 1)
    with pytest.raises(ValueError):
        codec.command(IAC)
    with pytest.raises(ValueError):
        TelnetParser(max_subnegotiation=-1)


# --- hypothesis -----------------------------------------------------------------

events_st = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=40).map(Data),
        st.sampled_from([NOP, AYT, 241, 242, 243, 244, 245, 246, 247, 248, 249, SE]).map(Command),
        st.builds(Negotiate, st.sampled_from(sorted(codec.VERBS)), st.integers(0, 255)),
        st.builds(Subnegotiation, st.integers(0, 255), st.binary(max_size=40)),
    ),
    max_size=30,
)


@given(events_st)
def test_roundtrip_encode_parse(events: list[Data | Command | Negotiate | Subnegotiation]) -> None:
    wire = b"".join(codec.encode(e) for e in events)
    assert merge(TelnetParser().feed(wire)) == merge(list(events))


@given(events_st, st.lists(st.integers(min_value=0), max_size=40))
def test_any_chunking_same_events(
    events: list[Data | Command | Negotiate | Subnegotiation], cuts: list[int]
) -> None:
    wire = b"".join(codec.encode(e) for e in events)
    whole = TelnetParser().feed(wire)
    assert merge(feed_chunks(split_at(wire, cuts))) == merge(whole)


@given(events_st)
def test_one_byte_per_chunk(events: list[Data | Command | Negotiate | Subnegotiation]) -> None:
    wire = b"".join(codec.encode(e) for e in events)
    assert merge(feed_chunks([wire[i : i + 1] for i in range(len(wire))])) == merge(
        TelnetParser().feed(wire)
    )


@settings(max_examples=300)
@given(
    st.binary(max_size=600).map(lambda b: b.replace(b"\x00", b"\xff")),
    st.lists(st.integers(min_value=0), max_size=30),
    st.integers(0, 64),
)
def test_random_bytes_never_crash_and_stay_bounded(
    garbage: bytes, cuts: list[int], max_sb: int
) -> None:
    p = TelnetParser(max_subnegotiation=max_sb)
    events: list[Event] = []
    for c in split_at(garbage, cuts):
        events.extend(p.feed(c))
        assert p.buffered <= max_sb
    for e in events:
        assert isinstance(e, Data | Command | Negotiate | Subnegotiation | ProtocolError)
        if isinstance(e, Subnegotiation):
            assert len(e.payload) <= max_sb
    # chunking invariance holds for garbage too
    assert merge(events) == merge(TelnetParser(max_subnegotiation=max_sb).feed(garbage))


@given(st.binary(max_size=300))
def test_data_bytes_preserved_exactly(payload: bytes) -> None:
    got = b"".join(
        e.data
        for e in feed_chunks(split_at(codec.escape(payload), [3, 7, 11]))
        if isinstance(e, Data)
    )
    assert got == payload
