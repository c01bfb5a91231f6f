"""The console protocol's EXEC and LOGS requests and exec frames (sans-IO)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.proto.console import protocol as proto

FT = proto.FrameType


def test_requests_round_trip() -> None:
    ex = proto.ExecRequest(
        vm="vm1",
        argv=("sh", "-c", "echo \udcff"),
        tty=True,
        stdin=True,
        env=(("A", "1"),),
        cwd="/tmp",
        user="root",
        rows=24,
        cols=80,
        timeout=2.5,
    )
    assert proto.decode_request(proto.encode_request(ex).rstrip(b"\n")) == ex
    logs = proto.LogsRequest(vm="vm1", tail=3, since=1.5, follow=True, timestamps=True)
    assert proto.decode_request(proto.encode_request(logs).rstrip(b"\n")) == logs


def test_old_requests_are_unchanged() -> None:
    """A client of before EXEC/LOGS sends no version: still understood, same bytes."""
    assert proto.encode_request(proto.ListRequest()) == b'{"op":"list"}\n'
    line = b'{"op":"attach","vm":"x","mode":"ro","replay":5}'
    assert proto.decode_request(line) == proto.AttachRequest(vm="x", mode="ro", replay=5)


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ({"op": "exec", "v": 2, "vm": "x", "argv": ["a"]}, "version 2"),
        ({"op": "exec", "vm": "x", "argv": []}, "'argv'"),
        ({"op": "exec", "vm": "x", "argv": [1]}, "'argv'"),
        ({"op": "exec", "vm": "", "argv": ["a"]}, "'vm'"),
        ({"op": "exec", "vm": "x", "argv": ["a"], "env": [["", "v"]]}, "'env'"),
        ({"op": "exec", "vm": "x", "argv": ["a"], "rows": 70000}, "'rows'"),
        ({"op": "exec", "vm": "x", "argv": ["a"], "tty": "yes"}, "'tty'"),
        ({"op": "exec", "vm": "x", "argv": ["a"], "timeout": -1}, "'timeout'"),
        ({"op": "logs", "vm": "x", "tail": -1}, "'tail'"),
        ({"op": "logs", "vm": "x", "since": "yesterday"}, "'since'"),
        ({"op": "logs", "vm": "x", "follow": 1}, "'follow'"),
        ({"op": "list", "v": True}, "version"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(obj: dict[str, object], words: str) -> None:
    with pytest.raises(proto.ProtocolError, match=words):
        proto.decode_request(json.dumps(obj).encode())


frames = st.lists(
    st.one_of(
        st.builds(lambda b: (FT.STDIN, b), st.binary(max_size=300)),
        st.builds(lambda b: (FT.STDOUT, b), st.binary(max_size=300)),
        st.just((FT.STDIN_EOF, b"")),
        st.builds(
            lambda r, c: (FT.RESIZE, proto.resize_frame(r, c)[5:]),
            st.integers(0, 65535),
            st.integers(0, 65535),
        ),
    ),
    max_size=20,
)


@given(frames, st.lists(st.integers(0, 10_000), max_size=10))
def test_frames_survive_any_split(items: list[tuple[FT, bytes]], cuts: list[int]) -> None:
    wire = b"".join(proto.encode_frame(t, p) for t, p in items)
    points = sorted({c % (len(wire) + 1) for c in cuts})
    reader = proto.FrameReader()
    got: list[proto.Frame] = []
    for a, b in zip([0, *points], [*points, len(wire)], strict=True):
        got += reader.feed(wire[a:b])
    assert [(f.type, f.payload) for f in got] == items


def test_bad_frames_are_refused_at_the_header() -> None:
    with pytest.raises(proto.ProtocolError, match="unknown frame type"):
        proto.FrameReader().feed(b"\x7f\x00\x00\x00\x00")
    with pytest.raises(proto.ProtocolError, match="max"):
        proto.FrameReader().feed(b"\x01\x7f\xff\xff\xff")  # no body waited for
    with pytest.raises(proto.ProtocolError):
        proto.parse_resize(b"\x00")
    assert proto.parse_resize(proto.resize_frame(24, 80)[5:]) == (24, 80)


def test_exit_and_logs_error_frames() -> None:
    (frame,) = proto.FrameReader().feed(proto.exit_frame(signal=9))
    assert frame.type is FT.EXIT and json.loads(frame.payload) == {"signal": 9}
    err = proto.logs_error_frame("behind")
    assert err[0] == proto.LOGS_ERROR_STREAM and err[8:] == b"behind"
