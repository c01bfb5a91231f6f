"""SESSION-ATTACH and ROTATE on the console protocol: round trips, refusals of bad
fields and versions, and the old requests unchanged beside them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.proto.console import protocol as proto

names = st.text(min_size=1, max_size=40)
u16 = st.integers(0, 0xFFFF)


@given(names, st.booleans(), u16, u16)
def test_session_attach_round_trips(vm: str, stdin: bool, rows: int, cols: int) -> None:
    req = proto.SessionAttachRequest(vm, stdin, rows, cols)
    line = proto.encode_request(req)
    assert line.endswith(b"\n")
    assert proto.decode_request(line[:-1]) == req


@given(names)
def test_rotate_round_trips(vm: str) -> None:
    line = proto.encode_request(proto.RotateRequest(vm))
    assert proto.decode_request(line[:-1]) == proto.RotateRequest(vm)


def _line(**obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (_line(op="session-attach", v=1), "'vm'"),
        (_line(op="session-attach", v=1, vm=""), "'vm'"),
        (_line(op="session-attach", v=1, vm="a", rows=70000), "'rows'"),
        (_line(op="session-attach", v=1, vm="a", cols=-1), "'cols'"),
        (_line(op="session-attach", v=1, vm="a", stdin="yes"), "'stdin'"),
        (_line(op="session-attach", v=2, vm="a"), "version 2"),
        (_line(op="rotate", v=1, vm=3), "'vm'"),
        (_line(op="rotate", v=True, vm="a"), "version True"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(line: bytes, needle: str) -> None:
    with pytest.raises(proto.ProtocolError, match=needle):
        proto.decode_request(line)


def test_old_requests_are_unchanged() -> None:
    assert proto.decode_request(_line(op="list")) == proto.ListRequest()
    att = proto.decode_request(_line(op="attach", vm="x", mode="ro"))
    assert att == proto.AttachRequest(vm="x", mode="ro")
    assert b'"v"' not in proto.encode_request(att)  # what an old server parses
    assert isinstance(proto.decode_request(_line(op="exec", vm="x", argv=["a"])), proto.ExecRequest)


def test_session_requests_are_the_ones_the_session_service_serves() -> None:
    reqs = [proto.SessionAttachRequest("x"), proto.RotateRequest("x")]
    assert all(isinstance(r, proto.SessionRequest) for r in reqs)
    assert not isinstance(proto.AttachRequest("x"), proto.SessionRequest)
