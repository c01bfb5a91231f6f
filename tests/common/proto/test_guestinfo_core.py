"""guestinfo key scheme (sans-IO core): keys, encodings, session config, limits."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.proto import guestinfo as gi

names = st.from_regex(r"\A[A-Za-z0-9_-][A-Za-z0-9_:@+-]{0,20}\Z")


def test_key_styles() -> None:
    assert gi.config_key("common", "id") == "guestinfo.vice./common/id"
    assert gi.config_key(gi.entry("sessions", "abc"), "cmd", "Args~") == (
        "guestinfo.vice./sessions|abc/cmd/Args~"
    )
    assert gi.started_key("abc") == "guestinfo.vice..sessions|abc.started"
    assert gi.status_key("abc") == "guestinfo.vice..sessions|abc.status"
    assert gi.stoptime_key("abc") == "guestinfo.vice..sessions|abc.detail.stoptime"
    assert gi.assigned_ip_key("public") == "guestinfo.vice..networks|public.assigned.IP"


def test_guest_writable() -> None:
    assert gi.is_guest_writable(gi.started_key("x"))
    assert not gi.is_guest_writable(gi.config_key("sessions"))
    assert not gi.is_guest_writable("guestinfo.vice..a/b")
    assert not gi.is_guest_writable("guestinfo.other")
    with pytest.raises(gi.ReadOnlyKeyError):
        gi.require_guest_writable("guestinfo.vice./common/id")


@pytest.mark.parametrize("bad", ["", "a/b", "a|b", "a~", "..", "a b", "-" * 200])
def test_bad_names(bad: str) -> None:
    with pytest.raises(gi.GuestinfoError):
        gi.entry("sessions", bad)


def test_nil_and_unset() -> None:
    assert gi.encode_str("") == gi.NIL
    for raw in (None, "", gi.NIL):
        assert gi.decode_str(raw) is None
        assert not gi.is_set(raw)
    assert gi.decode_str("x") == "x"


@given(st.lists(st.text()))
def test_array_roundtrip(items: list[str]) -> None:
    enc = gi.encode_array("k", items)
    assert gi.decode_array(enc.get("k"), enc.get("k~")) == items
    assert all(v != "" for v in enc.values())


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_ip_roundtrip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    enc = gi.encode_ip(addr)
    back = gi.decode_ip(enc)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        assert back == addr.ipv4_mapped
    else:
        assert back == addr


def test_ip_is_base64_of_bytes() -> None:
    assert gi.encode_ip("10.0.0.1") == "CgAAAQ=="
    assert gi.decode_ip("CgAAAQ==") == ipaddress.ip_address("10.0.0.1")
    with pytest.raises(gi.GuestinfoError):
        gi.decode_ip("AAA=")  # 2 bytes


@given(st.text(), st.text())
def test_garbage_never_crashes_views(k: str, v: str) -> None:
    values = {k: v, gi.guest_networks_key(): v, gi.errors_index_key(): v}
    gi.view_networks(values)
    gi.view_errors(values)
    gi.view_session("s", values)


@given(
    names,
    st.text(min_size=1).filter(lambda s: s.strip() != "" and "\x00" not in s),
    st.lists(st.text()),
    st.lists(st.from_regex(r"\A[A-Z_]{1,5}=[^\x00]*\Z")),
    st.booleans(),
    st.booleans(),
)
def test_session_roundtrip(
    sid: str, path: str, args: list[str], env: list[str], tty: bool, runblock: bool
) -> None:
    cfg = gi.SessionConfig(
        id=sid, path=path, args=tuple(args) or (path,), env=tuple(env), tty=tty, runblock=runblock
    )
    enc = gi.encode_session(cfg)
    assert all(not gi.is_guest_writable(k) for k in enc)
    got = gi.decode_session(sid, {k: enc.get(k) for k in gi.session_keys(sid)})
    assert got == cfg


def test_session_errors_are_user_text() -> None:
    with pytest.raises(gi.SessionConfigError, match="no command"):
        gi.decode_session("s", {})
    bad = gi.encode_session(gi.SessionConfig(id="s", path="/bin/true"))
    bad[gi.config_key(gi.session_base("s"), "tty")] = "maybe"
    with pytest.raises(gi.SessionConfigError, match="not a boolean"):
        gi.decode_session("s", bad)
    bad = gi.encode_session(gi.SessionConfig(id="s", path="/bin/true", env=("NOEQUALS",)))
    with pytest.raises(gi.SessionConfigError, match="environment"):
        gi.decode_session("s", bad)


def test_exit_order_and_view() -> None:
    enc = gi.encode_exit("s", 137, 1700000000, "SIGKILL")
    assert list(enc)[-1] == gi.status_key("s")  # status written last
    enc.update(gi.encode_started("s", True, starttime=1699999999))
    v = gi.view_session("s", enc)
    assert v.started == "true" and v.start_error is None
    assert v.exit == gi.ExitInfo(status=137, stoptime=1700000000, signal="SIGKILL")
    err = gi.view_session("s", gi.encode_started("s", False, "exec: no such file"))
    assert err.start_error == "exec: no such file"


def test_networks_publish_and_remove() -> None:
    a4 = ipaddress.ip_address("192.0.2.5")
    a6 = ipaddress.ip_address("2001:db8::5")
    enc = gi.encode_networks({"eth0": [a6, a4]})
    assert enc[gi.assigned_ip_key("eth0")] == gi.encode_ip(a4)
    assert gi.view_networks(enc) == {"eth0": [a4, a6]}
    gone = gi.encode_networks({}, previous={"eth0": [a4]})
    enc.update(gone)
    assert gi.view_networks(enc) == {}
    assert enc[gi.assigned_ip_key("eth0")] == gi.NIL


def test_ledger_limits() -> None:
    led = gi.SizeLedger(max_value=100, max_total=300)
    with pytest.raises(gi.GuestinfoLimitError, match="100 bytes per value"):
        led.check({"k": "x" * 101})
    led.record({"a": "x" * 90, "b": "x" * 90})
    led.check({"a": "y" * 90})  # replacing does not grow
    with pytest.raises(gi.GuestinfoLimitError, match="300 bytes per VM"):
        led.check({"c": "x" * 99, "d": "x" * 99})
    led.record({"a": gi.NIL})
    assert led.total < 300


@given(st.text(max_size=10000))
def test_clip_error(text: str) -> None:
    out = gi.clip_error(text, 100)
    assert 0 < len(out.encode()) <= 100


@given(st.dictionaries(st.sampled_from(gi.session_keys("s")), st.text(max_size=50)))
def test_decode_session_garbage_is_config_error_or_config(values: dict[str, str]) -> None:
    try:
        cfg = gi.decode_session("s", values)
    except gi.SessionConfigError as e:
        assert str(e).startswith("session s: ")
    else:
        assert cfg.path and cfg.args


@given(st.text(max_size=40))
def test_signal_request_garbage(raw: str) -> None:
    try:
        got = gi.decode_signal_request(raw)
    except gi.GuestinfoError:
        return
    assert got is None or (got[0] >= 0 and got[1])
