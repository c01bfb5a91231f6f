"""`route set --persist` edits one table of the TOML file and nothing else; the route
state file keeps overrides across a restart only while the file's route is unchanged."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.link.route import Route
from relay.route_state import RouteState
from relay.route_toml import rewrite, write_route

FILE = """host = "esx-a"   # the origin host
[peer]
admin-socket = "/run/vic/relay.sock"

[peer.routes.appliance]   # where streams go
address = "tcp:10.0.0.2:7443"   # esx-02
identity = "vic://host/esx-02"

[peer.routes.other]
address = "tcp:10.0.0.9:7443"
identity = "vic://host/esx-09"
"""


def r(address: str, identity: str = "vic://host/esx-03", tls: bool = True) -> Route:
    return Route(address, identity, tls, "appliance")


def test_rewrite_changes_only_the_route_lines_and_keeps_comments() -> None:
    out = rewrite(FILE, "appliance", r("tcp:10.0.0.3:7443"))
    assert 'address = "tcp:10.0.0.3:7443"   # esx-02' in out
    assert 'identity = "vic://host/esx-03"' in out
    assert out.replace("10.0.0.3", "10.0.0.2").replace("esx-03", "esx-02") == FILE


def test_rewrite_to_plaintext_drops_identity_and_adds_tls_false() -> None:
    out = rewrite(FILE, "appliance", Route("vsock:2:7443", "", False, "appliance"))
    doc = tomllib.loads(out)["peer"]["routes"]
    assert doc["appliance"] == {"address": "vsock:2:7443", "tls": False}
    assert doc["other"]["address"] == "tcp:10.0.0.9:7443"
    back = rewrite(out, "appliance", r("tcp:10.0.0.2:7443", "vic://host/esx-02"))
    want = tomllib.loads(FILE)
    want["peer"]["routes"]["appliance"]["tls"] = True  # the line stays, saying the default
    assert tomllib.loads(back) == want


def test_a_route_not_in_its_own_table_is_refused() -> None:
    inline = 'peer = { routes = { appliance = { address = "tcp:1.2.3.4:1", tls = false } } }\n'
    with pytest.raises(ValueError, match=r"no \[peer\.routes\.appliance\]"):
        rewrite(inline, "appliance", r("tcp:10.0.0.3:7443"))


@given(
    port=st.integers(1, 65535),
    name=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    tls=st.booleans(),
)
def test_rewrite_always_says_exactly_the_route(port: int, name: str, tls: bool) -> None:
    route = Route(f"tcp:127.0.0.1:{port}", f"vic://host/{name}" if tls else "", tls, "appliance")
    doc = tomllib.loads(rewrite(FILE, "appliance", route))
    got = doc["peer"]["routes"]["appliance"]
    assert (got["address"], got.get("identity", ""), got.get("tls", True)) == (
        route.address,
        route.identity,
        route.tls,
    )
    assert doc["peer"]["routes"]["other"] == tomllib.loads(FILE)["peer"]["routes"]["other"]


def test_write_route_keeps_the_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(FILE)
    path.chmod(0o640)
    write_route(path, "appliance", r("tcp:10.0.0.3:7443"))
    assert path.stat().st_mode & 0o777 == 0o640
    assert "10.0.0.3" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["relay.toml"]


def test_state_file_override_survives_restart_unless_the_file_changed(tmp_path: Path) -> None:
    state = tmp_path / "routes.json"
    file_routes = {"appliance": r("tcp:10.0.0.2:7443")}
    s1 = RouteState(state)
    s1.start(file_routes)
    s1.override("appliance", r("tcp:10.0.0.3:7443"))
    assert json.loads(state.read_text())["overrides"]["appliance"]["file"]["address"] == (
        "tcp:10.0.0.2:7443"
    )
    assert state.stat().st_mode & 0o777 == 0o600

    s2 = RouteState(state)
    assert s2.start(file_routes)["appliance"].address == "tcp:10.0.0.3:7443"
    assert s2.source("appliance", r("tcp:10.0.0.3:7443"))[0] == "override"

    s3 = RouteState(state)  # the file moved the route meanwhile: the override is stale
    assert s3.start({"appliance": r("tcp:10.0.0.4:7443")})["appliance"].address == (
        "tcp:10.0.0.4:7443"
    )
    assert not state.exists()  # no override left: no state file


def test_reload_drops_overrides_and_unreadable_state_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "routes.json"
    s = RouteState(state)
    s.start({"appliance": r("tcp:10.0.0.2:7443")})
    s.override("appliance", r("tcp:10.0.0.3:7443"))
    s.reload({"appliance": r("tcp:10.0.0.2:7443")})
    assert s.overrides == {} and not state.exists()
    state.write_text("{not json")
    assert RouteState(state).start({"appliance": r("tcp:10.0.0.2:7443")})["appliance"] == (
        r("tcp:10.0.0.2:7443")
    )
