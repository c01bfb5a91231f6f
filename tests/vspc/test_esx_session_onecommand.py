"""EsxSession's short cut for a read that is exactly one option-232 command (a vMotion
command, most often): it must mean exactly what the general parser makes of the same
bytes, whatever came before them and whatever the payload holds (0xFF, IAC SE, nothing,
too much)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from common.proto.telnet import codec
from common.proto.telnet import vmware as ext
from common.proto.telnet.codec import IAC, SB, SE, VMWARE_EXT
from vspc.core.esx_session import ConsoleData, EsxSession, ProtocolViolation, SessionEvent

HEAD = bytes((IAC, SB, VMWARE_EXT))
TAIL = bytes((IAC, SE))
MAX_SB = 40


def frame(payload: bytes) -> bytes:
    return HEAD + codec.escape(payload) + TAIL


def run(reads: list[bytes]) -> tuple[list[SessionEvent], bytes, str | None]:
    s = EsxSession(max_subnegotiation=MAX_SB)
    events: list[SessionEvent] = []
    out = b""
    for r in reads:
        s.receive_data(r)
        events += s.next_events()
        out += s.data_to_send()
    return merged(events), out, s.violation


def merged(events: list[SessionEvent]) -> list[SessionEvent]:
    """Adjacent console data as one (how reads cut it is no part of its meaning)."""
    out: list[SessionEvent] = []
    for ev in events:
        if out and isinstance(ev, ConsoleData) and isinstance(out[-1], ConsoleData):
            out[-1] = ConsoleData(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def bytewise(reads: list[bytes]) -> list[bytes]:
    """The same bytes one at a time: never the short cut (a command is 5 bytes or more)."""
    return [bytes((b,)) for b in b"".join(reads)]


commands = st.sampled_from(
    [ext.VMOTION_BEGIN, ext.VMOTION_PEER, ext.VMOTION_COMPLETE, ext.VMOTION_ABORT, 0x7F, 0xFF]
)
payloads = st.one_of(
    st.builds(lambda c, rest: bytes((c,)) + rest, commands, st.binary(max_size=50)),
    st.binary(max_size=50),  # anything: empty, IAC SE inside, over MAX_SB
)
before = st.sampled_from([b"", b"text", b"\xff", b"\xff\xfa", b"\xff\xfa\xe8(ab", frame(b"(x")])


@given(before, payloads, st.binary(max_size=8))
def test_one_command_read_means_what_the_parser_makes_of_it(
    first: bytes, payload: bytes, raw_tail: bytes
) -> None:
    for reads in (
        [first, frame(payload)],  # escaped as ESX does: the short cut when the parser idles
        [first, HEAD + payload + TAIL],  # raw: a lone IAC inside is not one command
        [first, frame(payload) + frame(b"(q")],  # two commands in one read
        [first, HEAD + raw_tail + TAIL + raw_tail],
    ):
        assert run(reads) == run(bytewise(reads))


def test_begin_with_0xff_in_its_seq() -> None:
    events, out, violation = run([frame(bytes((ext.VMOTION_BEGIN,)) + b"\xff\x01\xff")])
    assert events == [ext.VMotionBegin(b"\xff\x01\xff")] and not out and violation is None


def test_too_long_is_a_violation_as_ever() -> None:
    long = bytes((ext.VMOTION_BEGIN,)) + b"s" * MAX_SB
    events, out, violation = run([frame(long)])
    assert violation is not None and "longer than" in violation
    assert (events, out) == ([ProtocolViolation(violation)], b"")  # no command decoded
