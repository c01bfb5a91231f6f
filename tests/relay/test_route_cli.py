"""``vic relay route show``: the admin socket from the config (``-c`` or the default
path), or the explicit flag; a table, or the admin reply with ``--json``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from common.io.unixlisten import open_unix_listener
from common.ops.config import ConfigError
from relay import route_cli
from tests.support import vic_cli

ROUTES: dict[str, Any] = {
    "appliance": {
        "name": "appliance",
        "address": "tcp:10.0.0.2:7443",
        "identity": "vic://host/esx-02",
        "tls": True,
        "streams": 3,
        "link": {"peer": "vic://host/esx-02", "alive": True, "rtt_ms": 0.4, "streams": 3},
    }
}


def vic(*args: str) -> subprocess.CompletedProcess[str]:
    return vic_cli.vic("relay", *args)


async def _fake_admin(path: Path, seen: list[str], *, task_status: Any) -> None:
    """An admin socket answering every request with the routes above."""
    listener = await open_unix_listener(path, mode=0o600, backlog=4)

    async def handle(stream: trio.abc.Stream) -> None:
        data = await stream.receive_some(4096)
        seen.append(json.loads(data.decode())["cmd"])
        await stream.send_all(json.dumps({"ok": True, "routes": ROUTES}).encode() + b"\n")
        await stream.aclose()

    await trio.serve_listeners(handle, [listener], task_status=task_status)


async def test_route_show_reads_the_socket_from_the_config(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f'[peer]\nadmin-socket = "{sock}"\n')
    seen: list[str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            await n.start(_fake_admin, sock, seen)
            table = await trio.to_thread.run_sync(vic, "-c", str(cfg), "route", "show")
            as_json = await trio.to_thread.run_sync(vic, "route", "show", "--json", "-c", str(cfg))
            flag = await trio.to_thread.run_sync(
                vic, "route", "show", "--admin-socket", str(sock), "-c", "/nonexistent"
            )
            n.cancel_scope.cancel()
    assert table.returncode == 0, table.stderr
    head, row = table.stdout.splitlines()
    assert head.split() == ["ROUTE", "ADDRESS", "TLS", "IDENTITY", "LINK", "STREAMS"]
    assert row.split()[:4] == ["appliance", "tcp:10.0.0.2:7443", "yes", "vic://host/esx-02"]
    assert row.split()[-1] == "3" and "(up)" in row
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {"routes": ROUTES}
    assert flag.returncode == 0, flag.stderr  # the explicit flag wins; the config is not read
    assert seen == ["route.show"] * 3


def test_admin_socket_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIC_CONFIG_DIR", str(tmp_path / "none"))
    assert route_cli.admin_socket("", None) == route_cli.FALLBACK_SOCKET
    assert route_cli.admin_socket("/x.sock", tmp_path / "missing.toml") == "/x.sock"
    cfg = tmp_path / "relay.toml"
    cfg.write_text("[peer]\n")
    assert route_cli.admin_socket("", cfg) == route_cli.FALLBACK_SOCKET
    monkeypatch.setenv("VIC_CONFIG_DIR", str(tmp_path))  # its relay.toml
    cfg.write_text('[peer]\nadmin-socket = "/run/r.sock"\n')
    assert route_cli.admin_socket("", None) == "/run/r.sock"
    cfg.write_text("[peer\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        route_cli.admin_socket("", None)


def test_route_show_table_has_a_source_column_when_the_relay_reports_one() -> None:
    routes = {"b": {**ROUTES["appliance"], "source": "override"}, "a": {"address": "unix:/x"}}
    lines = route_cli.format_routes(routes).splitlines()
    assert lines[0].split()[-1] == "SOURCE"
    assert lines[1].split() == ["a", "unix:/x", "no", "-", "-", "0", "-"]
    assert lines[2].split()[0] == "b" and lines[2].split()[-1] == "override"


def test_missing_config_is_one_line_exit_2() -> None:
    r = vic("-c", "/nonexistent/relay.toml", "route", "show")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "config error: --config: cannot read" in r.stderr
