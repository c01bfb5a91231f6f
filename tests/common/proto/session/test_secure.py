"""common.proto.session.secure: the handshake, sync, rotation and versions, back to back."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from common.proto.session.errors import SecureError, SecureUsageError
from common.proto.session.secure import (
    TRANSITIONS,
    Established,
    Event,
    Record,
    Refused,
    Role,
    SecureChannel,
    State,
)
from common.proto.session.sync import MAGIC

SECRET = b"current secret, 32 bytes long..."
OLD = b"previous secret, also 32 bytes.."
OTHER = b"somebody else's secret, 32 bytes"


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def pair(
    initiator: Sequence[bytes] = (SECRET,), responder: Sequence[bytes] = (SECRET,), **kw: object
) -> tuple[SecureChannel, SecureChannel]:
    i = SecureChannel(Role.INITIATOR, initiator, random_bytes=seeded(1), **kw)  # type: ignore[arg-type]
    r = SecureChannel(Role.RESPONDER, responder, random_bytes=seeded(2), **kw)  # type: ignore[arg-type]
    i.start()
    r.start()
    return i, r


def shuttle(i: SecureChannel, r: SecureChannel) -> tuple[list[Event], list[Event]]:
    """Carry bytes both ways until neither end has anything to say."""
    got_i: list[Event] = []
    got_r: list[Event] = []
    while True:
        to_r, to_i = i.data_to_send(), r.data_to_send()
        if not to_r and not to_i:
            return got_i, got_r
        got_r += r.receive_data(to_r) if to_r else []
        got_i += i.receive_data(to_i) if to_i else []


def established(i: SecureChannel, r: SecureChannel) -> tuple[Established, Established]:
    got_i, got_r = shuttle(i, r)
    assert len(got_i) == len(got_r) == 1, (got_i, got_r)
    assert isinstance(got_i[0], Established) and isinstance(got_r[0], Established)
    return got_i[0], got_r[0]


def test_back_to_back_records_both_ways() -> None:
    i, r = pair(capabilities={"exec": "1", "tty": "resize"})
    ev_i, ev_r = established(i, r)
    assert i.state is r.state is State.ESTABLISHED
    assert ev_i == Established({"exec": "1", "tty": "resize"}, 1, 0) == ev_r
    i.send_record(b"from the appliance")
    i.send_record(b"")
    r.send_record(b"from the tether")
    assert r.receive_data(i.data_to_send()) == [Record(b"from the appliance"), Record(b"")]
    assert i.receive_data(r.data_to_send()) == [Record(b"from the tether")]


def test_any_buffer_type_reads_the_same() -> None:
    i, r = pair()
    r.receive_data(memoryview(b"junk" + i.data_to_send()))
    i.receive_data(bytearray(r.data_to_send()))
    r.receive_data(memoryview(i.data_to_send()))
    i.send_record(b"one")
    i.send_record(b"two")
    wire = i.data_to_send()
    assert r.receive_data(bytearray(wire[:9])) + r.receive_data(memoryview(wire)[9:]) == [
        Record(b"one"),
        Record(b"two"),
    ]


def test_relays_see_only_ciphertext() -> None:
    i, r = pair(capabilities={"name": "visible?"})
    established(i, r)
    i.send_record(b"the container's stdin" * 4)
    wire = i.data_to_send()
    assert b"stdin" not in wire and b"visible" not in wire and SECRET not in wire


def test_a_fresh_ephemeral_each_connection_gives_fresh_keys() -> None:
    out = []
    for seed in (1, 2):
        i = SecureChannel(Role.INITIATOR, [SECRET], random_bytes=seeded(seed))
        r = SecureChannel(Role.RESPONDER, [SECRET], random_bytes=seeded(9))
        i.start()
        established(i, r)
        i.send_record(b"same payload")
        out.append(i.data_to_send())
    assert out[0] != out[1]


def test_transition_table_and_misuse() -> None:
    assert all(State.CLOSED in TRANSITIONS[s] for s in State if s is not State.CLOSED)
    assert not TRANSITIONS[State.CLOSED]
    assert State.ESTABLISHED not in TRANSITIONS[State.SYNCING]
    i = SecureChannel(Role.INITIATOR, [SECRET])
    with pytest.raises(SecureUsageError):
        i.receive_data(b"x")
    with pytest.raises(SecureUsageError):
        i.send_record(b"too early")
    i.start()
    with pytest.raises(SecureUsageError):
        i.start()
    with pytest.raises(ValueError):
        SecureChannel(Role.RESPONDER, [])
    with pytest.raises(ValueError):
        SecureChannel(Role.RESPONDER, [SECRET] * 5)
    with pytest.raises(ValueError):
        SecureChannel(Role.RESPONDER, [b"short"])


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    payloads_i=st.lists(st.binary(max_size=300), max_size=6),
    payloads_r=st.lists(st.binary(max_size=300), max_size=6),
    junk_i=st.binary(max_size=600),
    junk_r=st.binary(max_size=600),
)
def test_any_chunking_and_leading_junk_give_the_same_records(
    data: st.DataObject,
    payloads_i: list[bytes],
    payloads_r: list[bytes],
    junk_i: bytes,
    junk_r: bytes,
) -> None:
    assume(MAGIC not in junk_i + MAGIC[:-1] and MAGIC not in junk_r + MAGIC[:-1])
    i, r = pair()
    pipes = {"to_r": bytearray(junk_r), "to_i": bytearray(junk_i)}
    got: dict[str, list[Event]] = {"to_r": [], "to_i": []}
    sent = {"to_r": False, "to_i": False}
    while True:
        for name, src, dst, payloads in (("to_r", i, r, payloads_i), ("to_i", r, i, payloads_r)):
            if src.state is State.ESTABLISHED and not sent[name]:
                sent[name] = True
                for payload in payloads:
                    src.send_record(payload)
            pipes[name] += src.data_to_send()
            if pipes[name]:
                n = data.draw(st.integers(1, len(pipes[name])), label=name)
                chunk = bytes(pipes[name][:n])
                del pipes[name][:n]
                got[name] += dst.receive_data(chunk)
        if not any(pipes.values()) and sent["to_r"] and sent["to_i"]:
            if not i.data_to_send() and not r.data_to_send():
                break
    assert got["to_r"] == [Established({}, 1, 0)] + [Record(p) for p in payloads_i]
    assert got["to_i"] == [Established({}, 1, 0)] + [Record(p) for p in payloads_r]


def test_junk_beyond_the_bound_is_refused_without_holding_it() -> None:
    r = SecureChannel(Role.RESPONDER, [SECRET], max_junk=1024)
    assert r.receive_data(b"\x00" * 1000) == []
    events = r.receive_data(b"boot noise\r\n" * 10)
    (refused,) = events
    assert isinstance(refused, Refused) and refused.code is SecureError.NO_SYNC
    assert r._scanner.junk == 1113 and len(r._scanner._tail) < len(MAGIC)
    assert r.state is State.CLOSED and r.receive_data(MAGIC) == []
    assert r.data_to_send().startswith(MAGIC)  # the ALERT goes out behind the marker


def test_junk_up_to_the_bound_then_the_handshake() -> None:
    i = SecureChannel(Role.INITIATOR, [SECRET], max_junk=4096)
    r = SecureChannel(Role.RESPONDER, [SECRET], max_junk=4096)
    i.start()
    noise = bytes(random.Random(5).randbytes(4096)).replace(b"\xf1", b"\xf0")
    assert r.receive_data(noise) == []
    assert r.state is State.SYNCING
    r.receive_data(i.data_to_send())
    assert i.receive_data(noise + r.data_to_send()) == [Established({}, 1, 0)]
    assert r.receive_data(i.data_to_send()) == [Established({}, 1, 0)]


def test_wrong_secret_is_auth_on_both_ends_and_nothing_more() -> None:
    i, r = pair(initiator=[OTHER], responder=[SECRET, OLD])
    got_i, got_r = shuttle(i, r)
    for got in (got_i, got_r):
        assert len(got) == 1 and isinstance(got[0], Refused) and got[0].code is SecureError.AUTH
    assert i.state is r.state is State.CLOSED


def test_wrong_secret_answer_is_the_same_whatever_the_secret() -> None:
    answers = set()
    for secret in (OTHER, b"y" * 16, b"z" * 200):
        i, r = pair(initiator=[secret])
        r.receive_data(i.data_to_send())
        answers.add(r.data_to_send())
    assert answers == {MAGIC + b"\x15\x00\x00\x00\x01\x03"}


@pytest.mark.parametrize(
    ("initiator", "responder", "index"),
    [([SECRET], [SECRET, OLD], 0), ([OLD], [SECRET, OLD], 1), ([OLD], [OTHER, SECRET, OLD], 2)],
)
def test_rotation_accepts_each_secret_held_and_names_it(
    initiator: list[bytes], responder: list[bytes], index: int
) -> None:
    i, r = pair(initiator=initiator, responder=responder)
    ev_i, ev_r = established(i, r)
    assert ev_r.secret_index == index and ev_i.secret_index == 0
    i.send_record(b"works")
    assert r.receive_data(i.data_to_send()) == [Record(b"works")]


@pytest.mark.parametrize(
    ("i_versions", "r_versions", "chosen"),
    [((1, 3), (1, 1), 1), ((1, 3), (1, 2), 2), ((1, 1), (1, 4), 1), ((2, 2), (1, 5), 2)],
)
def test_newer_initiator_talks_to_older_responder(
    i_versions: tuple[int, int], r_versions: tuple[int, int], chosen: int
) -> None:
    i = SecureChannel(
        Role.INITIATOR,
        [SECRET],
        capabilities={"exec": "1", "zmodem": "no"},
        min_version=i_versions[0],
        max_version=i_versions[1],
    )
    r = SecureChannel(
        Role.RESPONDER,
        [SECRET],
        capabilities={"exec": "1"},
        min_version=r_versions[0],
        max_version=r_versions[1],
    )
    i.start()
    ev_i, ev_r = established(i, r)
    assert ev_i.version == ev_r.version == chosen
    assert ev_i.peer_capabilities == {"exec": "1"}
    assert ev_r.peer_capabilities == {"exec": "1", "zmodem": "no"}


def test_no_common_version_is_refused_on_both_ends() -> None:
    i = SecureChannel(Role.INITIATOR, [SECRET], min_version=3, max_version=4)
    r = SecureChannel(Role.RESPONDER, [SECRET], min_version=1, max_version=2)
    i.start()
    got_i, got_r = shuttle(i, r)
    assert [e.code for e in got_i if isinstance(e, Refused)] == [SecureError.VERSION]
    assert [e.code for e in got_r if isinstance(e, Refused)] == [SecureError.VERSION]


def test_capabilities_are_bounded() -> None:
    with pytest.raises(ValueError):
        SecureChannel(Role.INITIATOR, [SECRET], capabilities={f"k{n}": "v" for n in range(33)})
    with pytest.raises(ValueError):
        SecureChannel(Role.INITIATOR, [SECRET], capabilities={"k": "v" * 1025})
    with pytest.raises(ValueError):
        SecureChannel(Role.INITIATOR, [SECRET], capabilities={"": "v"})


def test_the_wire_is_as_the_package_docstring_says() -> None:
    i, r = pair(capabilities={"k": "v"})
    init = i.data_to_send()
    hello = bytes([1, 1, 1, 1]) + b"k" + b"\x00\x01v"  # versions 1..1, one capability
    assert init[: len(MAGIC)] == MAGIC == bytes.fromhex("f1564943736563 8e".replace(" ", ""))
    assert init[len(MAGIC)] == 0x01  # INIT
    assert int.from_bytes(init[len(MAGIC) + 1 : len(MAGIC) + 5], "big") == 32 + len(hello) + 16
    assert len(init) == len(MAGIC) + 5 + 32 + len(hello) + 16
    r.receive_data(init)
    resp = r.data_to_send()
    assert resp[: len(MAGIC) + 1] == MAGIC + b"\x02"
    i.receive_data(resp)
    assert i.data_to_send()[:5] == b"\x03\x00\x00\x00\x10"  # FINISH: a bare tag
    i.send_record(b"abc")
    record = i.data_to_send()
    assert record[:13] == b"\x17" + (8 + 3 + 16).to_bytes(4, "big") + bytes(8)  # seq 0
    i.send_record(b"abc")
    assert i.data_to_send()[5:13] == (1).to_bytes(8, "big")
