"""The Docker endpoint's sans-IO cores: routes and versions, filters and params,
stream framing, container shapes (unit and hypothesis)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.proto import guestinfo as gi
from vspc.core.docker_api import DockerError, Verb, route
from vspc.core.docker_exec import DetachScanner, parse_detach_keys
from vspc.core.docker_frames import Deframer, FrameError, StdStream, frame
from vspc.core.docker_params import (
    Candidate,
    parse_filters,
    parse_signal,
    parse_since,
    parse_tail,
)
from vspc.core.docker_shapes import (
    ContainerFacts,
    MainFacts,
    container_state,
    human_duration,
    inspect,
    ps_entry,
    status_text,
)


def test_routes_and_versions() -> None:
    r = route("GET", "/v1.41/containers/web/logs?tail=5&stdout=1")
    assert (r.verb, r.version, r.ref, r.arg("tail")) == (Verb.LOGS, (1, 41), "web", "5")
    assert route("HEAD", "/_ping").verb is Verb.PING
    assert route("GET", "/v1.45/images/busybox/json").verb is Verb.NO_SUCH_OBJECT
    assert route("POST", "/v1.45/containers/create?name=x").verb is Verb.UNSUPPORTED
    assert route("DELETE", "/v1.45/containers/web").verb is Verb.UNSUPPORTED
    with pytest.raises(DockerError) as new:
        route("GET", "/v1.99/version")
    assert new.value.status == 400 and "Maximum supported API version is 1.45" in new.value.message
    with pytest.raises(DockerError) as old:
        route("GET", "/v1.12/version")
    assert "too old" in old.value.message


@given(st.sampled_from(["GET", "POST", "HEAD", "DELETE", "PUT"]), st.text(max_size=300))
def test_route_never_crashes(method: str, path: str) -> None:
    try:
        r = route(method, "/" + path)
    except DockerError as e:
        assert 400 <= e.status < 500 and "\n" not in e.message
    else:
        assert isinstance(r.verb, Verb)


def test_filters_both_shapes_and_matching() -> None:
    c = Candidate("abc123", "web-1", "exited", 3)
    assert parse_filters('{"name": {"web": true}}').match(c)
    assert parse_filters('{"name": ["^/web-1$"], "status": ["exited"]}').match(c)
    assert not parse_filters('{"name": ["^/web$"]}').match(c)
    assert parse_filters('{"id": ["abc"], "exited": ["3"]}').match(c)
    assert not parse_filters('{"exited": ["0"]}').match(c)
    assert parse_filters('{"status": ["running", "exited"]}').match(c)  # values OR
    assert not parse_filters('{"label": ["a=b"]}').match(c)
    for bad in ('{"colour": ["red"]}', '{"status": ["sleepy"]}', "[]", "{", '{"name": ["("]}'):
        with pytest.raises(DockerError) as e:
            parse_filters(bad)
        assert e.value.status == 400


@given(st.text(max_size=200))
def test_filters_garbage_is_400_or_parsed(text: str) -> None:
    try:
        parse_filters(text)
    except DockerError as e:
        assert e.status == 400


def test_params() -> None:
    assert parse_signal("SIGKILL") == parse_signal("kill") == parse_signal("9") == 9
    assert parse_signal("TERM") == 15 and parse_signal("RTMIN+2") == 36
    for bad in ("NOPE", "0", "65", "SIG", ""):
        with pytest.raises(DockerError):
            parse_signal(bad)
    assert parse_since("1700000000.500000000") == 1700000000.5
    assert parse_since("0") is None and parse_since("") is None
    assert parse_tail("all") is None and parse_tail("-1") is None and parse_tail("5") == 5
    with pytest.raises(DockerError):
        parse_tail("five")


_STREAMS = st.sampled_from([StdStream.STDOUT, StdStream.STDERR, StdStream.STDIN])


@given(
    st.lists(st.tuples(_STREAMS, st.binary(min_size=1, max_size=300)), max_size=20),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=10),
)
def test_framing_round_trips_in_any_chunking(
    frames: list[tuple[StdStream, bytes]], cuts: list[int]
) -> None:
    wire = b"".join(frame(s, p) for s, p in frames)
    d, out, i, k = Deframer(), [], 0, 0
    while i < len(wire):
        n = cuts[k % len(cuts)]
        out += d.feed(wire[i : i + n])
        i, k = i + n, k + 1
    assert [(f.stream, f.payload) for f in out] == frames
    assert d.at_boundary()


@given(st.binary(max_size=200))
def test_deframer_garbage_raises_or_stays_bounded(data: bytes) -> None:
    d = Deframer(max_payload=64)
    try:
        d.feed(data)
    except FrameError:
        return
    assert d.buffered <= 64 + 8


def test_frame_header_layout() -> None:
    assert frame(StdStream.STDERR, b"hi") == b"\x02\x00\x00\x00\x00\x00\x00\x02hi"
    assert frame(StdStream.STDOUT, b"") == b""
    with pytest.raises(FrameError):
        Deframer().feed(b"\x01\x00\x01\x00\x00\x00\x00\x01x")


def _facts(values: dict[str, str] | None = None, main: MainFacts | None = None) -> ContainerFacts:
    cfg = gi.SessionConfig(id="c1", path="/bin/sh", args=("sh", "-c", "x"), tty=True)
    base = gi.encode_sessions([cfg], "f" * 64) | (values or {})
    return ContainerFacts("vm1", base, True, main)


def test_states_from_guestinfo_and_session() -> None:
    assert container_state(_facts()).status == "created"
    started = gi.encode_started("c1", True, starttime=100)
    assert container_state(_facts(started)).status == "running"
    ended = started | gi.encode_exit("c1", 3, 200)
    s = container_state(_facts(ended))
    assert (s.status, s.exit_code, s.started_at, s.finished_at) == ("exited", 3, 100.0, 200.0)
    failed = container_state(_facts(gi.encode_started("c1", False, "no such file")))
    assert (failed.status, failed.error) == ("exited", "no such file")
    killed = container_state(_facts(started, MainFacts("exited", None, 9)))
    assert (killed.status, killed.exit_code) == ("exited", 137)
    assert status_text(killed, 0.0) == "Exited (137)"
    assert status_text(container_state(_facts(started)), 400.0) == "Up 5 minutes"
    assert human_duration(0.5) == "Less than a second" and human_duration(3600) == "About an hour"


def test_inspect_and_ps_shapes() -> None:
    nets = gi.encode_networks({"public": [gi.decode_ip(gi.encode_ip("10.1.2.3"))]})  # type: ignore[list-item]
    f = _facts(gi.encode_started("c1", True, starttime=100) | nets)
    c = inspect(f)
    assert c["Id"] == "f" * 64 and c["Name"] == "/vm1"
    assert c["Config"]["Cmd"] == ["sh", "-c", "x"] and c["Config"]["Tty"] is True
    assert c["NetworkSettings"]["IPAddress"] == "10.1.2.3"
    assert c["State"]["StartedAt"] == "1970-01-01T00:01:40.000000000Z"
    e = ps_entry(f, 160.0)
    assert (e["Names"], e["State"], e["Status"], e["Command"]) == (
        ["/vm1"],
        "running",
        "Up About a minute",
        "sh -c x",
    )
    json.dumps(c)


def test_detach_keys() -> None:
    assert parse_detach_keys("") == b"\x10\x11"
    assert parse_detach_keys("ctrl-a,b,ctrl-@") == b"\x01b\x00"
    with pytest.raises(DockerError):
        parse_detach_keys("ctrl-ab")
    d = DetachScanner(b"\x10\x11")
    assert d.feed(b"ab\x10") == b"ab" and not d.detached  # held: may begin the keys
    assert d.feed(b"c") == b"\x10c"  # it did not: forwarded
    assert d.feed(b"\x10") == b"" and d.feed(b"\x11tail") == b"" and d.detached


@given(st.binary(max_size=100), st.lists(st.integers(min_value=1, max_value=7), min_size=1))
def test_detach_scanner_any_chunking(data: bytes, cuts: list[int]) -> None:
    keys = b"\x10\x11"
    whole = DetachScanner(keys)
    want = whole.feed(data)
    d, got, i, k = DetachScanner(keys), bytearray(), 0, 0
    while i < len(data):
        got += d.feed(data[i : i + cuts[k % len(cuts)]])
        i, k = i + cuts[k % len(cuts)], k + 1
    cut = data.find(keys)
    if cut >= 0:
        assert d.detached and bytes(got) == want == data[:cut]
    else:
        assert bytes(got) == want and data.startswith(want) and len(data) - len(want) <= 1
