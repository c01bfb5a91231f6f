"""The switchboard: vMotions that abort or expire, and backpressure both ways."""

from __future__ import annotations

import pytest

from common.proto.vmotion import State
from vspc.core.switchboard import (
    BufferFull,
    CloseConn,
    Deliver,
    EventKind,
    ResumeReading,
    RoomAvailable,
    SendData,
    SendGoahead,
    SendNotNow,
    SendPeerOk,
)

from .switchboard_util import (
    COOKIE,
    LIMIT,
    SEQ,
    TIMEOUT,
    K,
    carried,
    kinds,
    peered,
    pending,
    sb,
)

# ---- abort and expiry


def test_abort_while_pending_flushes_to_source_in_the_same_call() -> None:
    s = sb()
    pending(s)
    s.to_vm(K, b"held")
    acts = s.abort("src", 1.0)
    assert SendData("src", b"held") in acts
    assert kinds(acts) == ["vmotion_abort"]
    assert s.pending_vmotions() == [] and s.carrier(K) == "src"
    assert s.to_vm(K, b"x") == [SendData("src", b"x")]
    assert s.next_deadline() is None


def test_abort_while_peered_closes_destination() -> None:
    s = sb()
    peered(s)
    s.from_vm("dst", b"D")
    acts = s.abort("src", 1.0)
    assert CloseConn("dst", "vMotion aborted") in acts
    assert Deliver(K, b"D") in acts  # nothing it sent is lost
    assert s.carrier(K) == "src"
    assert kinds(s.abort("src", 2.0)) == ["abort_ignored"]
    s.connection_closed("dst", 2.0)
    assert s.connections() == ["src"]


def test_abort_from_non_source_is_ignored() -> None:
    s = sb()
    peered(s)
    assert kinds(s.abort("dst", 1.0)) == ["abort_ignored"]
    assert s.pending_vmotions()[0].state is State.PEERED


def test_expiry_clears_pending_and_closes_destination() -> None:
    s = sb()
    peered(s)
    s.to_vm(K, b"held")
    assert s.tick(TIMEOUT - 0.01) == []
    acts = s.tick(TIMEOUT)
    assert kinds(acts) == ["vmotion_expire"]
    assert CloseConn("dst", "vMotion expired") in acts
    assert SendData("src", b"held") in acts
    assert s.pending_vmotions() == [] and s.next_deadline() is None
    assert s.carrier(K) == "src"
    # a late PEER or COMPLETE finds nothing
    assert kinds(s.peer("dst", COOKIE, 6.0)) == ["peer_refused"]


def test_destination_never_completes_and_source_is_gone() -> None:
    s = sb()
    peered(s)
    s.connection_closed("src", 1.0)
    s.to_vm(K, b"k" * LIMIT)
    assert s.to_vm_room(K) == 0
    with pytest.raises(BufferFull):
        s.to_vm(K, b"!")
    acts = s.tick(TIMEOUT)
    assert CloseConn("dst", "vMotion expired") in acts
    assert s.carrier(K) is None
    assert s.to_vm_buffered(K) == LIMIT  # kept, not dropped
    s.connection_closed("dst", TIMEOUT)
    s.connection_opened("again")
    acts = s.identified("again", K, 9.0)
    assert SendData("again", b"k" * LIMIT) in acts
    assert RoomAvailable(K) in acts


def test_destination_closes_before_complete_then_another_peers() -> None:
    s = sb()
    peered(s)
    s.from_vm("dst", b"D")
    acts = s.connection_closed("dst", 1.0)
    assert kinds(acts) == ["disconnect", "vmotion_dest_closed"]
    assert Deliver(K, b"D") in acts
    assert s.pending_vmotions()[0].state is State.PENDING
    s.connection_opened("dst2")
    assert SendPeerOk("dst2", SEQ) in s.peer("dst2", COOKIE, 2.0)
    s.complete("dst2", SEQ, 3.0)
    assert s.carrier(K) == "dst2"


def test_waiting_identity_is_closed_when_vmotion_aborts() -> None:
    s = sb()
    pending(s)
    s.connection_opened("w")
    s.identified("w", K, 1.0)
    s.from_vm("w", b"W")
    acts = s.abort("src", 2.0)
    assert CloseConn("w", "vMotion settled without this connection") in acts
    assert Deliver(K, b"W") in acts
    assert s.carrier(K) == "src"


def test_waiting_identity_becomes_carrier_if_source_is_gone() -> None:
    s = sb()
    pending(s)
    s.connection_opened("w")
    s.identified("w", K, 1.0)
    s.connection_closed("src", 2.0)
    s.to_vm(K, b"t")
    acts = s.tick(TIMEOUT)
    assert kinds(acts) == ["vmotion_expire", "identity"]
    assert SendData("w", b"t") in acts
    assert s.carrier(K) == "w"


# ---- backpressure


def test_to_vm_room_and_room_available() -> None:
    s = sb()
    pending(s)
    assert s.to_vm(K, b"a" * 10) == []
    assert s.to_vm_room(K) == LIMIT - 10
    with pytest.raises(BufferFull):
        s.to_vm(K, b"b" * 7)
    assert s.to_vm(K, b"b" * 6) == []
    assert s.to_vm_room(K) == 0
    acts = s.abort("src", 1.0)
    assert acts.index(SendData("src", b"a" * 10 + b"b" * 6)) < acts.index(RoomAvailable(K))
    assert s.to_vm_room(K) == LIMIT


def test_from_vm_hold_limit_and_resume_reading() -> None:
    s = sb()
    peered(s)
    s.complete("dst", SEQ, 1.0)
    assert s.from_vm_room("dst") == LIMIT
    s.from_vm("dst", b"x" * 20)  # one read may overshoot; never refused
    assert s.from_vm_room("dst") == 0
    assert s.from_vm_held("dst") == 20
    acts = s.connection_closed("src", 2.0)
    assert acts[-2:] == [Deliver(K, b"x" * 20), ResumeReading("dst")]
    assert s.from_vm_room("dst") == LIMIT


def test_reconfigure() -> None:
    s = sb(max_concurrent_vmotions=0)
    carried(s)
    assert isinstance(s.begin("src", b"q", b"r", 0.0)[0], SendNotNow)
    s.reconfigure(max_concurrent_vmotions=1, vmotion_timeout=1.0)
    assert isinstance(s.begin("src", b"q", b"r", 0.0)[0], SendGoahead)
    assert s.next_deadline() == 1.0
    with pytest.raises(ValueError):
        s.reconfigure(vmotion_timeout=0)


def test_event_kinds_are_strings() -> None:
    assert str(EventKind.VMOTION_EXPIRE) == "vmotion_expire"
    assert "vmotion_expire" in {k.value for k in EventKind}
