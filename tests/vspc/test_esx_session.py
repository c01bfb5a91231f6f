"""EsxSession: the vSPC side of one ESX connection (sans-IO)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from common.proto.telnet import codec
from common.proto.telnet import vmware as ext
from common.proto.telnet.codec import (
    AUTHENTICATION,
    BINARY,
    COM_PORT,
    DO,
    DONT,
    NOP,
    SGA,
    VMWARE_EXT,
    WILL,
    WONT,
    Negotiate,
    Subnegotiation,
    TelnetParser,
)
from common.proto.telnet.vmware import (
    VmName,
    VMotionAbort,
    VMotionBegin,
    VMotionComplete,
    VMotionPeer,
)
from vspc.core.esx_session import (
    PROXY_KNOWN,
    ConsoleData,
    EsxSession,
    ProtocolViolation,
    ProxyRequested,
    SessionEvent,
    VmUuid,
)

RAW_UUID = "42 1d 2a 3b 4c 5d 6e 7f-80 91 a2 b3 c4 d5 e6 f7"
KEY = "421d2a3b4c5d6e7f8091a2b3c4d5e6f7"
URI = "telnet://vspc.example:13370?port=com2"


def neg(verb: int, opt: int) -> bytes:
    return codec.negotiate(verb, opt)


def decode_out(wire: bytes) -> list[object]:
    """What ESX would see: negotiations and decoded option-232 commands."""
    out: list[object] = []
    for ev in TelnetParser().feed(wire):
        if isinstance(ev, Subnegotiation) and ev.option == VMWARE_EXT:
            out.append(ext.decode(ev.payload))
        else:
            out.append(ev)
    return out


ESX_OFFERS = b"".join(
    [
        neg(WILL, BINARY),
        neg(WILL, SGA),
        neg(WILL, VMWARE_EXT),
        neg(DO, BINARY),
        neg(DO, SGA),
        neg(WILL, AUTHENTICATION),
        neg(WILL, COM_PORT),
    ]
)


def handshake_script(known: tuple[int, ...] = tuple(sorted(ext.ALL_COMMANDS))) -> bytes:
    return b"".join(
        [
            ESX_OFFERS,
            ext.encode(ext.KnownSuboptions(known, proxy=False)),
            ext.encode(ext.DoProxy("S", URI)),
            b"boot \xff\x00\r\n\x11",
            ext.encode(ext.VmVcUuid(RAW_UUID)),
            ext.encode(ext.VmName("web-01")),
        ]
    ).replace(b"boot \xff", b"boot \xff\xff")


def test_initial_bytes() -> None:
    s = EsxSession()
    init = s.initial_bytes()
    assert decode_out(init) == [
        Negotiate(WILL, BINARY),
        Negotiate(WILL, SGA),
        Negotiate(DO, BINARY),
        Negotiate(DO, SGA),
        Negotiate(DO, VMWARE_EXT),
    ]
    assert s.initial_bytes() == b""


def test_full_handshake() -> None:
    s = EsxSession()
    s.initial_bytes()
    s.receive_data(handshake_script())
    assert s.next_events() == [
        ProxyRequested("S", URI, "com2", True),
        ConsoleData(b"boot \xff\x00\r\n\x11"),
        VmUuid(RAW_UUID, KEY),
        VmName("web-01"),
    ]
    # our offers crossed ESX's: no re-acknowledging, only the refusals; then 232 replies
    assert decode_out(s.data_to_send()) == [
        Negotiate(DONT, AUTHENTICATION),
        Negotiate(DONT, COM_PORT),
        ext.KnownSuboptions(PROXY_KNOWN, proxy=True),
        ext.GetVmVcUuid(),
        ext.GetVmName(),
        ext.WillProxy(),
    ]
    assert s.data_to_send() == b""
    assert s.binary and s.extension_enabled
    assert (s.uuid, s.uuid_raw, s.name, s.label) == (KEY, RAW_UUID, "web-01", "com2")
    assert not s.negotiator.is_enabled_remote(AUTHENTICATION)


def test_esx_first_then_our_offers_accepted() -> None:
    """ESX offers before we sent anything: we accept, and our later offers are no-ops."""
    s = EsxSession()
    s.receive_data(ESX_OFFERS)
    assert decode_out(s.data_to_send()) == [
        Negotiate(DO, BINARY),
        Negotiate(DO, SGA),
        Negotiate(DO, VMWARE_EXT),
        Negotiate(WILL, BINARY),
        Negotiate(WILL, SGA),
        Negotiate(DONT, AUTHENTICATION),
        Negotiate(DONT, COM_PORT),
    ]
    assert s.initial_bytes() == b""  # all already enabled


def test_known_without_identity_commands_asks_nothing() -> None:
    s = EsxSession()
    s.receive_data(ext.encode(ext.KnownSuboptions((40, 44, 46, 48), proxy=False)))
    assert decode_out(s.data_to_send()) == [ext.KnownSuboptions(PROXY_KNOWN)]
    assert s.esx_known is not None and tuple(s.esx_known) == (40, 44, 46, 48)


def test_proxy_rule_refuses() -> None:
    seen: list[tuple[str, str]] = []

    def rule(direction: str, uri: str) -> bool:
        seen.append((direction, uri))
        return False

    s = EsxSession(rule)
    s.receive_data(ext.encode(ext.DoProxy("C", "telnet://x")))
    assert s.next_events() == [ProxyRequested("C", "telnet://x", None, False)]
    assert decode_out(s.data_to_send()) == [ext.WontProxy()]
    assert seen == [("C", "telnet://x")]
    assert s.label is None


def test_identity_without_do_proxy() -> None:
    s = EsxSession()
    s.receive_data(ext.encode(ext.VmVcUuid(RAW_UUID)))
    assert s.next_events() == [VmUuid(RAW_UUID, KEY)]


def test_unknown_and_wrong_direction_commands() -> None:
    s = EsxSession()
    s.receive_data(
        ext.encode(ext.Unknown(99, b"xx"))
        + ext.encode(ext.GetVmName())
        + ext.encode(ext.UnknownSuboptionRcvd(41, proxy=False))
        + ext.encode(ext.UnknownSuboptionRcvd(41, proxy=True))
        + ext.encode(ext.VmBiosUuid("bios"))
        + ext.encode(ext.VmLocationUuid("loc"))
        + codec.subnegotiation(COM_PORT, b"\x01\x02")
        + codec.command(NOP)
    )
    assert s.next_events() == []
    assert decode_out(s.data_to_send()) == [
        ext.UnknownSuboptionRcvd(99),
        ext.UnknownSuboptionRcvd(ext.GET_VM_NAME),
    ]
    assert (s.bios_uuid, s.location_uuid) == ("bios", "loc")


def test_vmotion_events_and_replies_with_0xff() -> None:
    seq = b"\xff\x00\xffseq"
    secret = b"\xff\xff\x01"
    s = EsxSession()
    s.receive_data(
        b"a"
        + ext.encode(ext.VMotionBegin(seq))
        + b"b"
        + ext.encode(ext.VMotionPeer(seq + secret))
        + ext.encode(ext.VMotionComplete(seq))
        + ext.encode(ext.VMotionAbort())
    )
    assert s.next_events() == [
        ConsoleData(b"a"),
        VMotionBegin(seq),
        ConsoleData(b"b"),
        VMotionPeer(seq + secret),
        VMotionComplete(seq),
        VMotionAbort(),
    ]
    assert s.data_to_send() == b""
    got = decode_out(s.goahead(seq, secret) + s.notnow(seq) + s.peer_ok(seq))
    assert got == [
        ext.VMotionGoahead(seq + secret, b""),
        ext.VMotionNotNow(seq),
        ext.VMotionPeerOk(seq),
    ]


def test_send_console_escapes() -> None:
    assert EsxSession.send_console(b"\xff\x00\r\n\x11") == b"\xff\xff\x00\r\n\x11"


def test_overlong_subnegotiation_kills_session() -> None:
    s = EsxSession(max_subnegotiation=100)
    s.receive_data(b"before")
    s.receive_data(codec.subnegotiation(VMWARE_EXT, b"\x46S" + b"u" * 1000))
    s.receive_data(b"after" + ext.encode(ext.VmVcUuid(RAW_UUID)))
    events = s.next_events()
    assert events[0] == ConsoleData(b"before")
    assert len(events) == 2 and isinstance(events[1], ProtocolViolation)
    assert s.violation is not None


def test_never_ending_subnegotiation_is_bounded() -> None:
    s = EsxSession(max_subnegotiation=1000)
    s.receive_data(bytes([codec.IAC, codec.SB, VMWARE_EXT]))
    for _ in range(100):
        s.receive_data(b"x" * 999)
        assert s._parser.buffered <= 1000
    assert isinstance(s.next_events()[-1], ProtocolViolation)


def test_bad_and_changed_uuid() -> None:
    s = EsxSession()
    s.receive_data(ext.encode(ext.VmVcUuid("not a uuid!")))
    assert [type(e) for e in s.next_events()] == [ProtocolViolation]
    s = EsxSession()
    s.receive_data(ext.encode(ext.VmVcUuid(RAW_UUID)) + ext.encode(ext.VmVcUuid(RAW_UUID.upper())))
    assert s.next_events() == [VmUuid(RAW_UUID, KEY), VmUuid(RAW_UUID.upper(), KEY)]
    s.receive_data(ext.encode(ext.VmVcUuid("00" * 16)))
    assert [type(e) for e in s.next_events()] == [ProtocolViolation]


def test_malformed_ext_is_violation() -> None:
    s = EsxSession()
    s.receive_data(codec.subnegotiation(VMWARE_EXT, b""))
    assert [type(e) for e in s.next_events()] == [ProtocolViolation]
    s = EsxSession()
    s.receive_data(codec.subnegotiation(VMWARE_EXT, b"\x46Quri"))
    assert [type(e) for e in s.next_events()] == [ProtocolViolation]


def test_wont_for_our_request() -> None:
    s = EsxSession()
    s.initial_bytes()
    s.receive_data(neg(WONT, VMWARE_EXT) + neg(DONT, BINARY))
    assert s.data_to_send() == b""
    assert not s.extension_enabled


# --- hypothesis -------------------------------------------------------------------


def merged(events: list[SessionEvent]) -> list[SessionEvent]:
    out: list[SessionEvent] = []
    for ev in events:
        if isinstance(ev, ConsoleData) and out and isinstance(out[-1], ConsoleData):
            ev = ConsoleData(out.pop().data + ev.data)  # type: ignore[union-attr]
        out.append(ev)
    return out


pieces = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=30).map(codec.escape),
        st.binary(max_size=20).map(lambda b: ext.encode(ext.VMotionBegin(b))),
        st.binary(max_size=20).map(lambda b: ext.encode(ext.VMotionPeer(b))),
        st.binary(max_size=20).map(lambda b: ext.encode(ext.VMotionComplete(b))),
        st.just(ext.encode(ext.VMotionAbort())),
        st.just(ext.encode(ext.VmName("n\xe4me"))),
        st.just(ext.encode(ext.DoProxy("S", URI))),
        st.integers(100, 255).map(lambda c: ext.encode(ext.Unknown(c, b"\xff"))),
        st.sampled_from([ESX_OFFERS, handshake_script(), codec.command(NOP)]),
    ),
    max_size=15,
)


@settings(max_examples=150)
@given(pieces, st.lists(st.integers(min_value=0), max_size=30), st.booleans())
def test_any_chunking_same_events_and_replies(
    script: list[bytes], cuts: list[int], one_byte: bool
) -> None:
    wire = b"".join(script)
    whole = EsxSession()
    whole.receive_data(wire)
    want_events, want_out = whole.next_events(), whole.data_to_send()

    s = EsxSession()
    if one_byte:
        chunks = [wire[i : i + 1] for i in range(len(wire))]
    else:
        points = sorted({c % (len(wire) + 1) for c in cuts})
        chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    events: list[SessionEvent] = []
    out = b""
    for c in chunks:
        s.receive_data(c)
        events.extend(s.next_events())
        out += s.data_to_send()
    assert merged(events) == merged(want_events)
    assert out == want_out
    assert not any(isinstance(e, ProtocolViolation) for e in events)


@settings(max_examples=200)
@given(st.binary(max_size=500), st.lists(st.integers(min_value=0), max_size=20))
def test_garbage_never_crashes(garbage: bytes, cuts: list[int]) -> None:
    # make IACs and 232 frames likely
    garbage = garbage.replace(b"\x01", b"\xff").replace(b"\x02", b"\xff\xfa\xe8")
    s = EsxSession(max_subnegotiation=64)
    points = sorted({c % (len(garbage) + 1) for c in cuts})
    for a, b in zip([0, *points], [*points, len(garbage)], strict=True):
        s.receive_data(garbage[a:b])
        assert s._parser.buffered <= 64
        for ev in s.next_events():
            assert isinstance(
                ev,
                ConsoleData
                | VmUuid
                | VmName
                | ProxyRequested
                | VMotionBegin
                | VMotionPeer
                | VMotionComplete
                | VMotionAbort
                | ProtocolViolation,
            )
        s.data_to_send()


def test_only_a_real_uuid_and_a_valid_label_name_a_port() -> None:
    """Hex-like names are not UUIDs (ab-cd and abcd would merge); a DO-PROXY
    ``port=`` outside the label grammar (a path, a newline, too long) is refused."""
    for raw in ("abcd", "ab-cd", "42" * 17, "../../x", RAW_UUID + "0", "4" * 60_000):
        s = EsxSession()
        s.receive_data(ext.encode(ext.VmVcUuid(raw)))
        assert [type(e) for e in s.next_events()] == [ProtocolViolation], raw
        assert s.uuid is None
    for uri in (
        "telnet://x?port=../../etc",
        "telnet://x?port=a%2Fb",
        "telnet://x?port=a%0Ab",
        "telnet://x?port=.hidden",
        "telnet://x?port=" + "p" * 33,
    ):
        s = EsxSession()
        s.receive_data(ext.encode(ext.DoProxy("S", uri)))
        assert [type(e) for e in s.next_events()] == [ProtocolViolation], uri
        assert s.label is None
        assert ext.WillProxy() not in decode_out(s.data_to_send())
    s = EsxSession()
    s.receive_data(ext.encode(ext.DoProxy("S", "telnet://x?port=com_2.a-b")))
    assert s.next_events() == [ProxyRequested("S", "telnet://x?port=com_2.a-b", "com_2.a-b", True)]
