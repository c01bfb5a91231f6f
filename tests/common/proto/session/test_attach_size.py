"""OPEN_ATTACH's pty size (CAP_ATTACH_SIZE): on the wire only to a peer offering the
capability; an older peer gets the size as a RESIZE right behind the OPEN_ATTACH, and
its sizeless OPEN_ATTACH still decodes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.proto.session.channels import AttachRequested, Resized, Role
from common.proto.session.messages import (
    CAP_ATTACH_SIZE,
    CAP_EXIT_TIMED_OUT,
    CAPS,
    ErrorCode,
    MessageError,
    MsgType,
    OpenAttach,
    decode,
    encode,
)
from common.proto.session.session import Session, SessionConfig
from tests.common.proto.session.test_session import SID, Wire, of_type

OLDER = SessionConfig(caps=CAP_EXIT_TIMED_OUT)  # what a tether before the size offered
HEAD = bytes([MsgType.OPEN_ATTACH, 0]) + (5).to_bytes(8, "big") + (2).to_bytes(4, "big")


def test_the_size_goes_on_the_wire_only_to_a_peer_offering_it() -> None:
    msg = OpenAttach(5, 2, True, 24, 80)
    assert CAPS & CAP_ATTACH_SIZE
    assert encode(msg) == HEAD + b"\x01" + (24).to_bytes(2, "big") + (80).to_bytes(2, "big")
    assert encode(msg, caps=CAP_EXIT_TIMED_OUT) == HEAD + b"\x01"  # byte for byte the old one
    assert decode(HEAD + b"\x01") == OpenAttach(5, 2, True, 0, 0)
    assert decode(encode(msg)) == msg
    with pytest.raises(ValueError, match="out of range"):
        encode(OpenAttach(5, 2, True, 70_000, 80))


@given(st.integers(0, 2), st.booleans())
def test_a_part_of_the_size_is_refused(n: int, tty: bool) -> None:
    with pytest.raises(MessageError) as e:
        decode(HEAD + bytes([tty]) + bytes(n + 1))
    assert e.value.code is ErrorCode.TRUNCATED


def _wire(tether: SessionConfig | None) -> Wire:
    w = Wire()
    w.t = Session(Role.TETHER, None, tether)
    w.sides = (w.a, w.t)
    w.t.connection_up(0.0)
    return w


@pytest.mark.parametrize("live", [False, True])
def test_a_peer_with_the_capability_gets_the_size_in_open_attach_alone(live: bool) -> None:
    w = _wire(None)
    if live:
        w.settle()
    ch = w.a.open_attach(True, 33, 77)
    w.settle()
    assert of_type(w.events[1], AttachRequested) == [AttachRequested(ch, True, 33, 77)]
    assert of_type(w.events[1], Resized) == []


@pytest.mark.parametrize("live", [False, True])
def test_an_older_peer_gets_the_size_as_a_resize_right_behind(live: bool) -> None:
    """Opened before the peer's caps are known (a new session) or after."""
    w = _wire(OLDER)
    if live:
        w.settle()
    ch = w.a.open_attach(False, 33, 77)
    w.settle()
    assert w.a.peer_caps == CAP_EXIT_TIMED_OUT
    got = [e for e in w.events[1] if isinstance(e, AttachRequested | Resized)]
    assert got == [AttachRequested(ch, False, 0, 0), Resized(ch, 33, 77)]


def test_no_size_sends_nothing_more_and_the_size_survives_a_cut() -> None:
    w = _wire(None)
    plain = w.a.open_attach(True)
    w.flush()
    w.cut()  # the OPEN_ATTACHes go again on the next connection
    sized = w.a.open_attach(True, 10, 20)
    w.settle()
    assert of_type(w.events[1], AttachRequested) == [
        AttachRequested(plain, True, 0, 0),
        AttachRequested(sized, True, 10, 20),
    ]
    assert of_type(w.events[1], Resized) == []
    assert w.a.session_id == SID
