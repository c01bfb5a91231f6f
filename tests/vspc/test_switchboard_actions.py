"""The switchboard states its decisions as actions: a settled vMotion, a refused
PEER (and whether to close its sender), a deferred identity and when it is ready."""

from __future__ import annotations

from vspc.core.identity import DEFAULT_LABEL, PortKey
from vspc.core.switchboard import (
    IdentityDeferred,
    IdentityReady,
    Outcome,
    PeerRefused,
    PortClaimed,
    VMotionSettled,
)

from .switchboard_util import COOKIE, SEQ, TIMEOUT, K, carried, kinds, only, peered, pending, sb

UUID = K.uuid
DEFAULT = PortKey(UUID, DEFAULT_LABEL)


# ---- settled vMotion


def test_complete_settles_the_vmotion() -> None:
    s = sb()
    peered(s)
    acts = s.complete("dst", SEQ, 1.0)
    assert only(acts, VMotionSettled) == [VMotionSettled(K, Outcome.COMPLETE)]


def test_abort_settles_the_vmotion() -> None:
    s = sb()
    peered(s)
    acts = s.abort("src", 1.0)
    assert only(acts, VMotionSettled) == [VMotionSettled(K, Outcome.ABORT)]


def test_expiry_settles_the_vmotion() -> None:
    s = sb()
    pending(s)
    acts = s.tick(TIMEOUT + 1.0)
    assert only(acts, VMotionSettled) == [VMotionSettled(K, Outcome.EXPIRED)]


def test_no_settlement_while_pending_or_for_a_refusal() -> None:
    s = sb()
    assert not only(pending(s), VMotionSettled)
    s.connection_opened("dst")
    assert not only(s.peer("dst", COOKIE, 0.5), VMotionSettled)
    assert not only(s.complete("dst", b"other", 1.0), VMotionSettled)  # wrong seq: refused
    assert not only(s.connection_closed("src", 1.0), VMotionSettled)  # still pending
    assert s.pending_vmotions()


# ---- refused peer


def test_refused_peer_from_a_stranger_closes_it() -> None:
    s = sb()
    pending(s)
    s.connection_opened("x")
    acts = s.peer("x", SEQ + b"wrong", 1.0)
    assert kinds(acts) == ["peer_refused"]
    assert acts[-1] == PeerRefused("x", close=True)


def test_refused_peer_without_any_vmotion_closes_it() -> None:
    s = carried(sb())
    s.connection_opened("x")
    assert s.peer("x", COOKIE, 0.0)[-1] == PeerRefused("x", close=True)


def test_refused_peer_from_a_carrier_keeps_it() -> None:
    s = sb()
    pending(s)
    acts = s.peer("src", COOKIE, 1.0)  # the source may not be its own destination
    assert kinds(acts) == ["peer_refused"]
    assert acts[-1] == PeerRefused("src", close=False)


def test_accepted_peer_is_not_refused() -> None:
    s = sb()
    assert not only(peered(s), PeerRefused)


# ---- identity deferral


def test_identity_with_a_label_is_claimed_at_once() -> None:
    s = sb()
    pending(s)
    s.connection_opened("dst")
    acts = s.identify("dst", UUID, K.label, 1.0)
    assert acts[0] == PortClaimed("dst", K)
    assert kinds(acts) == ["identity"]  # waiting: the vMotion is pending


def test_identity_without_a_label_and_no_vmotion_is_the_default_port() -> None:
    s = sb()
    s.connection_opened("a")
    acts = s.identify("a", UUID, None, 0.0)
    assert acts[0] == PortClaimed("a", DEFAULT)
    assert s.carrier(DEFAULT) == "a"


def test_identity_without_a_label_waits_for_peer() -> None:
    s = sb()
    pending(s)
    s.connection_opened("dst")
    assert s.identify("dst", UUID, None, 0.5) == [IdentityDeferred("dst", UUID)]
    assert s.port_of("dst") is None
    s.peer("dst", COOKIE, 1.0)
    assert s.port_of("dst") == K
    acts = s.complete("dst", SEQ, 2.0)
    assert not only(acts, IdentityReady)  # bound by its cookie: nothing deferred is left
    assert s.carrier(K) == "dst"


def test_deferred_identity_is_ready_when_the_vmotion_settles_without_it() -> None:
    s = sb()
    pending(s)
    s.connection_opened("late")
    assert s.identify("late", UUID, None, 0.5) == [IdentityDeferred("late", UUID)]
    acts = s.abort("src", 1.0)
    assert only(acts, VMotionSettled) == [VMotionSettled(K, Outcome.ABORT)]
    assert acts[-1] == IdentityReady("late", DEFAULT)
    acts = s.claim("late", DEFAULT, 1.0)
    assert acts[0] == PortClaimed("late", DEFAULT)
    assert s.carrier(DEFAULT) == "late"


def test_deferred_identity_is_ready_after_expiry() -> None:
    s = sb()
    pending(s)
    s.connection_opened("late")
    s.identify("late", UUID, None, 0.5)
    assert only(s.tick(TIMEOUT + 1.0), IdentityReady) == [IdentityReady("late", DEFAULT)]


def test_closed_deferred_connection_is_forgotten() -> None:
    s = sb()
    pending(s)
    s.connection_opened("late")
    s.identify("late", UUID, None, 0.5)
    s.connection_closed("late", 0.6)
    assert not only(s.abort("src", 1.0), IdentityReady)


def test_deferral_waits_for_every_vmotion_of_the_vm() -> None:
    s = sb()
    pending(s)  # K: serial0 of the VM
    other = PortKey(UUID, "serial1")
    s.connection_opened("src1")
    s.identified("src1", other, 0.0)
    s.begin("src1", b"\x02", b"secret2", 0.0)
    s.connection_opened("late")
    s.identify("late", UUID, None, 0.5)
    assert not only(s.abort("src", 1.0), IdentityReady)  # serial1's vMotion still pending
    assert only(s.abort("src1", 1.5), IdentityReady) == [IdentityReady("late", DEFAULT)]
