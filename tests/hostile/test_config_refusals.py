"""Issue 11, items 6, 7, 10: a listener that would trust the network is refused
at start, as a config error: exit status 2 and ONE line naming the key.

Each bad config is tried with ``--check`` and as a real start (a daemon that
starts instead says READY=1 and is killed: the test fails). The safe variants
next to each (TLS, loopback, an explicit ``insecure = true``) pass ``--check``,
so the rule refuses exactly what it should.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.hostile.appliance import deep_merge, vspc_config
from tests.relay.pki_helpers import Pki
from tests.support.daemons import free_port, start_expecting_exit

ANY = "0.0.0.0"  # not loopback (bound only if the defect lets the daemon start)


def relay_config(workdir: Path, **over: Any) -> dict[str, Any]:
    """The README's appliance-host relay.toml, on loopback, sessions ending here."""
    base: dict[str, Any] = {
        "host": "esx-02",
        "egress": {"default": {"kind": "unix", "path": str(workdir / "endpoint.sock")}},
        "metrics": {"enabled": False},
    }
    return deep_merge(base, over)


async def assert_refused(kind: str, workdir: Path, config: dict[str, Any], key: str) -> None:
    for check in (True, False):
        ended = await start_expecting_exit(kind, workdir, config, check=check)
        how = "--check" if check else "start"
        assert ended.code is not None, f"{how}: the daemon started:\n{ended.stderr}"
        assert ended.code == 2, f"{how}: exit {ended.code}:\n{ended.stderr}"
        assert len(ended.lines) == 1, f"{how}: not one line:\n{ended.stderr}"
        assert key in ended.lines[0], f"{how}: {ended.lines[0]!r} does not name {key}"


async def assert_accepted(kind: str, workdir: Path, config: dict[str, Any]) -> None:
    ended = await start_expecting_exit(kind, workdir, config, check=True)
    assert ended.code == 0, ended.stderr


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


# ---- item 6: the appliance endpoint


async def test_plaintext_endpoint_off_loopback_is_refused(tmp_path: Path, pki: Pki) -> None:
    """The README's minimal config (`[endpoint] host = "0.0.0.0"`, no TLS) is refused
    naming `endpoint.tls`; TLS with client certificates, loopback, or an explicit
    `insecure = true` are accepted."""
    port = free_port()
    bad = vspc_config(tmp_path, endpoint={"host": ANY, "port": port})
    await assert_refused("vspc", tmp_path, bad, "endpoint.tls")
    server = pki.issue("appliance", "vch")
    no_client_ca = deep_merge(
        bad, {"endpoint": {"tls": {"cert": str(server.cert), "key": str(server.key)}}}
    )
    await assert_refused("vspc", tmp_path, no_client_ca, "endpoint.tls")
    mtls = deep_merge(no_client_ca, {"endpoint": {"tls": {"client-ca": str(server.ca)}}})
    await assert_accepted("vspc", tmp_path, mtls)
    await assert_accepted("vspc", tmp_path, deep_merge(bad, {"endpoint": {"insecure": True}}))
    await assert_accepted(
        "vspc", tmp_path, vspc_config(tmp_path, endpoint={"host": "127.0.0.1", "port": port})
    )


async def test_plaintext_endpoint_link_off_loopback_is_refused(tmp_path: Path) -> None:
    """`[[endpoint.link]]` on a non-loopback TCP address with `tls = false` is
    refused naming `endpoint.link[0].tls`; on loopback it is accepted."""
    port = free_port()
    bad = vspc_config(tmp_path, endpoint={"link": [{"address": f"tcp:{ANY}:{port}", "tls": False}]})
    await assert_refused("vspc", tmp_path, bad, "endpoint.link[0].tls")
    ok = vspc_config(
        tmp_path, endpoint={"link": [{"address": f"tcp:127.0.0.1:{port}", "tls": False}]}
    )
    await assert_accepted("vspc", tmp_path, ok)


# ---- item 7: the Telnet listener


async def test_telnet_listener_off_loopback_needs_allowed_sources(tmp_path: Path) -> None:
    """`[listen] host = "0.0.0.0"` without `allowed-sources` is refused naming
    `listen.allowed-sources`; with the ESX management networks listed it is accepted."""
    bad = vspc_config(tmp_path, listen={"host": ANY})
    await assert_refused("vspc", tmp_path, bad, "listen.allowed-sources")
    ok = deep_merge(bad, {"listen": {"allowed-sources": ["10.0.0.0/8", "192.168.10.0/24"]}})
    await assert_accepted("vspc", tmp_path, ok)


# ---- item 10: relay peer links


async def test_plaintext_peer_listener_off_loopback_is_refused(tmp_path: Path) -> None:
    """`[[peer.listen]]` on a non-loopback TCP address with `tls = false` is refused
    naming `peer.listen[0].tls`; loopback and Unix plaintext listeners are accepted."""
    port = free_port()
    bad = relay_config(tmp_path, peer={"listen": [{"address": f"tcp:{ANY}:{port}", "tls": False}]})
    await assert_refused("relay", tmp_path, bad, "peer.listen[0].tls")
    for address in (f"tcp:127.0.0.1:{port}", f"unix:{tmp_path / 'peer.sock'}"):
        ok = relay_config(tmp_path, peer={"listen": [{"address": address, "tls": False}]})
        await assert_accepted("relay", tmp_path, ok)
