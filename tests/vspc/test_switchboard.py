"""The switchboard: ports, carriers, vMotion handoff and the bytes around it."""

from __future__ import annotations

import pytest

from common.proto.vmotion import State
from vspc.core.switchboard import (
    CloseConn,
    Deliver,
    Dropped,
    PeerRefused,
    PortEvent,
    SendData,
    SendGoahead,
    SendNotNow,
    SendPeerOk,
)

from .switchboard_util import (
    COOKIE,
    K2,
    LIMIT,
    SECRET,
    SEQ,
    TIMEOUT,
    K,
    carried,
    kinds,
    only,
    peered,
    pending,
    sb,
)

# ---- identity, carrier, takeover


def test_identified_connection_carries_port_both_ways() -> None:
    s = sb()
    assert kinds(s.connection_opened("a")) == ["connect"]
    acts = s.identified("a", K, 0.0)
    assert kinds(acts) == ["identity"]
    assert s.carrier(K) == "a" and s.port_of("a") == K
    assert s.from_vm("a", b"\x00\xff\r\n") == [Deliver(K, b"\x00\xff\r\n")]
    assert s.to_vm(K, b"\xff\x11") == [SendData("a", b"\xff\x11")]
    assert s.identified("a", K, 1.0) == []  # repeated identity: nothing


def test_identity_conflict_is_ignored() -> None:
    s = carried(sb(), "a")
    acts = s.identified("a", K2, 1.0)
    assert kinds(acts) == ["identity_conflict"]
    assert s.port_of("a") == K and s.carrier(K2) is None


def test_bytes_before_identity_are_held_then_delivered_or_dropped() -> None:
    s = sb()
    s.connection_opened("a")
    assert s.from_vm("a", b"early") == []
    acts = s.identified("a", K, 0.0)
    assert Deliver(K, b"early") in acts
    s.connection_opened("b")
    s.from_vm("b", b"lost")
    acts = s.connection_closed("b", 1.0)
    assert Dropped("b", b"lost", "closed before any identity") in acts


def test_newer_connection_takes_over_and_old_bytes_come_first() -> None:
    s = carried(sb(), "old")
    s.connection_opened("new")
    acts = s.identified("new", K, 1.0)
    assert kinds(acts) == ["identity", "takeover"]
    assert CloseConn("old", "superseded by a newer connection for the same port") in acts
    assert s.carrier(K) == "new"
    assert s.to_vm(K, b"x") == [SendData("new", b"x")]
    assert s.from_vm("new", b"N1") == []  # held: old has not closed yet
    assert s.from_vm("old", b"O1") == [Deliver(K, b"O1")]  # in flight from the old one
    acts = s.connection_closed("old", 2.0)
    assert only(acts, Deliver) == [Deliver(K, b"N1")]
    assert s.from_vm("new", b"N2") == [Deliver(K, b"N2")]


def test_carrier_close_leaves_port_without_carrier_and_to_vm_waits() -> None:
    s = carried(sb(), "a")
    acts = s.connection_closed("a", 1.0)
    assert kinds(acts) == ["disconnect"]
    assert s.carrier(K) is None
    assert s.to_vm(K, b"typed") == []
    assert s.to_vm_room(K) == LIMIT - 5
    s.connection_opened("b")
    acts = s.identified("b", K, 2.0)
    assert SendData("b", b"typed") in acts
    assert s.to_vm_buffered(K) == 0


def test_port_is_forgotten_when_nothing_is_left() -> None:
    s = carried(sb(), "a")
    s.connection_closed("a", 1.0)
    assert s.ports() == []
    assert s.connections() == []
    assert s.connection_closed("a", 1.0) == []  # repeated close: nothing


# ---- the happy vMotion


def test_begin_answers_goahead_at_once_with_seq_and_secret() -> None:
    s = sb()
    acts = pending(s, now=3.0)
    assert acts[0] == SendGoahead("src", SEQ, SECRET)
    assert kinds(acts) == ["vmotion_begin"]
    [info] = s.pending_vmotions()
    assert (info.key, info.state, info.seq, info.source, info.dest) == (
        K,
        State.PENDING,
        SEQ,
        "src",
        None,
    )
    assert info.deadline == 3.0 + TIMEOUT
    assert s.next_deadline() == 3.0 + TIMEOUT


def test_full_vmotion_switches_and_flushes_in_the_completing_call() -> None:
    s = sb()
    pending(s)
    # appliance->VM bytes during the vMotion wait
    assert s.to_vm(K, b"\xffkeys") == []
    assert s.to_vm_room(K) == LIMIT - 5
    # the source keeps delivering
    assert s.from_vm("src", b"S1") == [Deliver(K, b"S1")]
    s.connection_opened("dst")  # no DO-PROXY, no UUID: the cookie binds it
    acts = s.peer("dst", COOKIE, 1.0)
    assert acts[0] == SendPeerOk("dst", SEQ)
    assert kinds(acts) == ["vmotion_peer"]
    assert s.port_of("dst") == K
    assert s.pending_vmotions()[0].state is State.PEERED
    acts = s.complete("dst", SEQ, 2.0)
    assert SendData("dst", b"\xffkeys") in acts  # flushed by COMPLETE itself
    assert kinds(acts) == ["vmotion_complete"]
    assert s.carrier(K) == "dst"
    assert s.pending_vmotions() == []
    # destination bytes wait for the source to close; the source's still come first
    assert s.from_vm("dst", b"D1") == []
    assert s.from_vm("src", b"S2") == [Deliver(K, b"S2")]
    assert s.to_vm(K, b"more") == [SendData("dst", b"more")]
    acts = s.connection_closed("src", 3.0)
    assert only(acts, Deliver) == [Deliver(K, b"D1")]
    assert s.from_vm("dst", b"D2") == [Deliver(K, b"D2")]
    assert s.next_deadline() is None


def test_destination_identity_before_peer_waits_then_completes() -> None:
    s = sb()
    pending(s)
    s.connection_opened("dst")
    acts = s.identified("dst", K, 0.5)  # UUID before PEER: must not take over
    assert kinds(acts) == ["identity"]
    assert s.carrier(K) == "src"
    assert s.from_vm("dst", b"D0") == []
    assert SendPeerOk("dst", SEQ) in s.peer("dst", COOKIE, 1.0)
    s.complete("dst", SEQ, 2.0)
    assert s.carrier(K) == "dst"
    assert only(s.connection_closed("src", 3.0), Deliver) == [Deliver(K, b"D0")]


def test_repeated_peer_from_destination_is_answered_again() -> None:
    s = sb()
    peered(s)
    assert s.peer("dst", COOKIE, 1.0) == [SendPeerOk("dst", SEQ)]


def test_source_closing_early_then_complete() -> None:
    s = sb()
    pending(s)
    s.from_vm("src", b"S")
    acts = s.connection_closed("src", 0.5)
    assert kinds(acts) == ["disconnect", "vmotion_source_closed"]
    assert s.carrier(K) is None
    assert s.pending_vmotions()[0].source is None
    s.to_vm(K, b"k")
    s.connection_opened("dst")
    s.peer("dst", COOKIE, 1.0)
    s.from_vm("dst", b"D")  # before COMPLETE: held
    acts = s.complete("dst", SEQ, 2.0)
    assert SendData("dst", b"k") in acts
    assert Deliver(K, b"D") in acts  # no source left to wait for
    assert s.from_vm("dst", b"E") == [Deliver(K, b"E")]


def test_source_never_closes_after_complete_is_closed_at_drain_deadline() -> None:
    s = sb()
    peered(s)
    s.complete("dst", SEQ, 10.0)
    s.from_vm("dst", b"D")
    assert s.next_deadline() == 10.0 + TIMEOUT
    assert s.tick(14.0) == []
    acts = s.tick(15.0)
    assert kinds(acts) == ["drain_timeout"]
    assert only(acts, CloseConn)[0].conn == "src"
    assert s.next_deadline() is None
    assert s.from_vm("src", b"late") == [Deliver(K, b"late")]  # still first
    acts = s.connection_closed("src", 15.1)
    assert only(acts, Deliver) == [Deliver(K, b"D")]


# ---- refusals


def test_peer_with_wrong_secret_is_refused_and_nothing_switches() -> None:
    s = sb()
    pending(s)
    s.connection_opened("evil")
    acts = s.peer("evil", SEQ + b"guess", 1.0)
    [ev] = only(acts, PortEvent)
    assert (ev.key, ev.kind) == (K, "peer_refused")
    assert "wrong secret" in ev.detail
    assert not only(acts, SendPeerOk)
    assert s.port_of("evil") is None
    assert kinds(s.complete("evil", SEQ, 2.0)) == ["complete_refused"]
    assert s.carrier(K) == "src"
    assert s.pending_vmotions()[0].state is State.PENDING


@pytest.mark.parametrize("cookie", [b"nope", b"", SECRET, COOKIE[:-1], COOKIE + b"\x00"])
def test_peer_for_unknown_or_inexact_cookie_is_refused(cookie: bytes) -> None:
    s = sb()
    pending(s)
    s.connection_opened("x")
    acts = s.peer("x", cookie, 1.0)
    assert kinds(acts) == ["peer_refused"]
    assert not only(acts, SendPeerOk)
    assert s.port_of("x") is None


def test_peer_with_no_vmotion_anywhere() -> None:
    s = carried(sb())
    s.connection_opened("x")
    [ev, refused] = s.peer("x", COOKIE, 0.0)
    assert isinstance(ev, PortEvent) and ev.key is None and ev.kind == "peer_refused"
    assert refused == PeerRefused("x", close=True)


def test_peer_from_source_or_other_port_is_refused() -> None:
    s = sb()
    pending(s)
    assert kinds(s.peer("src", COOKIE, 1.0)) == ["peer_refused"]
    carried(s, "other", K2)
    assert kinds(s.peer("other", COOKIE, 1.0)) == ["peer_refused"]
    assert s.pending_vmotions()[0].dest is None


def test_second_destination_is_refused() -> None:
    s = sb()
    peered(s)
    s.connection_opened("dst2")
    acts = s.peer("dst2", COOKIE, 1.0)
    assert kinds(acts) == ["peer_refused"]
    assert s.pending_vmotions()[0].dest == "dst"


def test_second_begin_while_pending_is_notnow() -> None:
    s = sb()
    pending(s)
    acts = s.begin("src", b"\xff2", b"s2", 1.0)
    assert acts[0] == SendNotNow("src", b"\xff2")
    assert kinds(acts) == ["vmotion_notnow"]
    assert s.pending_vmotions()[0].seq == SEQ


def test_notnow_on_concurrent_limit() -> None:
    s = sb(max_concurrent_vmotions=1)
    pending(s)
    carried(s, "b", K2)
    acts = s.begin("b", b"q", b"r", 1.0)
    assert acts[0] == SendNotNow("b", b"q")
    assert len(s.pending_vmotions()) == 1
    s.abort("src", 2.0)
    assert isinstance(s.begin("b", b"q", b"r", 3.0)[0], SendGoahead)


def test_cookie_colliding_with_another_pending_vmotion_is_notnow() -> None:
    s = sb()
    carried(s, "a", K)
    carried(s, "b", K2)
    assert isinstance(s.begin("a", b"ab", b"c", 0.0)[0], SendGoahead)
    assert s.begin("b", b"a", b"bc", 0.0)[0] == SendNotNow("b", b"a")  # same seq+secret bytes
    s.connection_opened("d")
    assert SendPeerOk("d", b"ab") in s.peer("d", b"abc", 1.0)
    assert s.port_of("d") == K


def test_begin_from_unidentified_or_non_carrier_is_notnow() -> None:
    s = sb()
    s.connection_opened("anon")
    assert s.begin("anon", b"q", b"r", 0.0)[0] == SendNotNow("anon", b"q")
    peered(s)
    assert s.begin("dst", b"q", b"r", 0.0)[0] == SendNotNow("dst", b"q")


def test_complete_with_wrong_seq_or_before_peer_is_refused() -> None:
    s = sb()
    pending(s)
    s.connection_opened("dst")
    assert kinds(s.complete("dst", SEQ, 1.0)) == ["complete_refused"]
    s.peer("dst", COOKIE, 1.0)
    assert kinds(s.complete("dst", b"other", 1.0)) == ["complete_refused"]
    assert kinds(s.complete("src", SEQ, 1.0)) == ["complete_refused"]
    assert s.carrier(K) == "src"


def test_empty_secret_is_a_programming_error() -> None:
    s = carried(sb())
    with pytest.raises(ValueError):
        s.begin("src", SEQ, b"", 0.0)
