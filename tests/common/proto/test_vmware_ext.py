"""Option 232 (VMware Telnet extension): encode/decode of every command."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.proto.telnet import vmware as ext
from common.proto.telnet.codec import IAC, SB, SE, VMWARE_EXT, Subnegotiation, TelnetParser


def wire_to_cmd(wire: bytes) -> ext.VmwareCommand:
    events = TelnetParser().feed(wire)
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, Subnegotiation) and ev.option == VMWARE_EXT
    return ext.decode(ev.payload)


def test_frame_layout_and_doubling() -> None:
    wire = ext.encode(ext.VMotionGoahead(b"\x01\xff", b"\xff\x02"))
    assert wire == bytes([IAC, SB, VMWARE_EXT, 41, 1, 0xFF, 0xFF, 0xFF, 0xFF, 2, IAC, SE])
    assert ext.encode(ext.WillProxy()) == bytes([IAC, SB, VMWARE_EXT, 71, IAC, SE])
    assert ext.encode(ext.KnownSuboptions((0, 1, 255))) == bytes(
        [IAC, SB, VMWARE_EXT, 1, 0, 1, 255, 255, IAC, SE]
    )


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x00\x28\x2c\x50\x52", ext.KnownSuboptions((40, 44, 80, 82), proxy=False)),
        (b"\x01\x00", ext.KnownSuboptions((0,), proxy=True)),
        (b"\x02\x63", ext.UnknownSuboptionRcvd(99, proxy=False)),
        (b"\x03\x63", ext.UnknownSuboptionRcvd(99, proxy=True)),
        (b"\x28seq", ext.VMotionBegin(b"seq")),
        (b"\x29seqsecret", ext.VMotionGoahead(b"seqsecret", b"")),
        (b"\x2bseq", ext.VMotionNotNow(b"seq")),
        (b"\x2cseqsecret", ext.VMotionPeer(b"seqsecret")),
        (b"\x2dseq", ext.VMotionPeerOk(b"seq")),
        (b"\x2eseq", ext.VMotionComplete(b"seq")),
        (b"\x30", ext.VMotionAbort()),
        (b"\x46Stelnet://vspc:1?port=com2", ext.DoProxy("S", "telnet://vspc:1?port=com2")),
        (b"\x46Cx", ext.DoProxy("C", "x")),
        (b"\x47", ext.WillProxy()),
        (b"\x49", ext.WontProxy()),
        (
            b"\x5042 1d 2a 3b 4c 5d 6e 7f-80 91 a2 b3 c4 d5 e6 f7",
            ext.VmVcUuid("42 1d 2a 3b 4c 5d 6e 7f-80 91 a2 b3 c4 d5 e6 f7"),
        ),
        (b"\x51", ext.GetVmVcUuid()),
        ("\x52caf\u00e9-vm".encode(), ext.VmName("caf\u00e9-vm")),
        (b"\x53", ext.GetVmName()),
        (b"\x54abc", ext.VmBiosUuid("abc")),
        (b"\x55", ext.GetVmBiosUuid()),
        (b"\x56def", ext.VmLocationUuid("def")),
        (b"\x57", ext.GetVmLocationUuid()),
        (b"\x63\x01\x02", ext.Unknown(99, b"\x01\x02")),
    ],
)
def test_decode_every_command(payload: bytes, expected: ext.VmwareCommand) -> None:
    assert ext.decode(payload) == expected
    # and the frame round-trips through the Telnet parser
    assert wire_to_cmd(ext.encode(expected)) == expected


def test_every_table_command_has_a_name() -> None:
    assert set(ext.NAMES) == set(ext.ALL_COMMANDS)
    assert len(ext.ALL_COMMANDS) == 22


@pytest.mark.parametrize("payload", [b"", b"\x46", b"\x46Xuri", b"\x02"])
def test_malformed(payload: bytes) -> None:
    with pytest.raises(ext.MalformedCommand):
        ext.decode(payload)


def test_bad_name_bytes_do_not_raise() -> None:
    assert ext.decode(b"\x52\xff\xfe") == ext.VmName("\ufffd\ufffd")


def test_split_cookie() -> None:
    assert ext.split_cookie(b"\xff\x01SECRET", b"\xff\x01") == b"SECRET"
    assert ext.split_cookie(b"XX", b"\xff") is None


any_bytes = st.binary(max_size=64)

commands = st.one_of(
    st.builds(
        ext.KnownSuboptions, st.lists(st.integers(0, 255), max_size=30).map(tuple), st.booleans()
    ),
    st.builds(ext.UnknownSuboptionRcvd, st.integers(0, 255), st.booleans()),
    st.builds(ext.VMotionBegin, any_bytes),
    st.builds(ext.VMotionNotNow, any_bytes),
    st.builds(ext.VMotionPeer, any_bytes),
    st.builds(ext.VMotionPeerOk, any_bytes),
    st.builds(ext.VMotionComplete, any_bytes),
    st.just(ext.VMotionAbort()),
    st.builds(ext.DoProxy, st.sampled_from(["S", "C"]), st.text(max_size=40)),
    st.just(ext.WillProxy()),
    st.just(ext.WontProxy()),
    st.builds(ext.VmVcUuid, st.text(max_size=40)),
    st.just(ext.GetVmVcUuid()),
    st.builds(ext.VmName, st.text(max_size=40)),
    st.just(ext.GetVmName()),
    st.builds(ext.VmBiosUuid, st.text(max_size=40)),
    st.just(ext.GetVmBiosUuid()),
    st.builds(ext.VmLocationUuid, st.text(max_size=40)),
    st.just(ext.GetVmLocationUuid()),
    st.builds(
        ext.Unknown,
        st.integers(0, 255).filter(lambda c: c not in ext.ALL_COMMANDS),
        any_bytes,
    ),
)


@given(commands)
def test_roundtrip(cmd: ext.VmwareCommand) -> None:
    try:
        wire = ext.encode(cmd)
    except UnicodeEncodeError:  # lone surrogates are not text ESX could send
        return
    assert wire_to_cmd(wire) == cmd


@given(any_bytes, any_bytes, st.lists(st.integers(min_value=0), max_size=10))
def test_seq_and_secret_with_0xff_roundtrip_any_chunking(
    seq: bytes, secret: bytes, cuts: list[int]
) -> None:
    wire = ext.encode(ext.VMotionGoahead(seq, secret))
    assert wire.count(b"\xff") == 2 + 2 * (seq + secret).count(b"\xff")
    p = TelnetParser()
    events = []
    points = sorted({c % (len(wire) + 1) for c in cuts})
    prev = 0
    for pt in [*points, len(wire)]:
        events.extend(p.feed(wire[prev:pt]))
        prev = pt
    assert len(events) == 1 and isinstance(events[0], Subnegotiation)
    got = ext.decode(events[0].payload)
    assert isinstance(got, ext.VMotionGoahead)
    assert got.cookie == seq + secret
    assert ext.split_cookie(got.cookie, seq) == secret
    # PEER carries the same cookie back
    assert wire_to_cmd(ext.encode(ext.VMotionPeer(seq + secret))) == ext.VMotionPeer(seq + secret)


@given(any_bytes)
def test_decode_never_raises_anything_but_malformed(payload: bytes) -> None:
    try:
        ext.decode(payload)
    except ext.MalformedCommand:
        pass
