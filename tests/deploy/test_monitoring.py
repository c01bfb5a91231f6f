"""deploy/prometheus and deploy/grafana: the alert rules pass ``promtool check rules``
and their own ``promtool test rules`` (Debian: the prometheus package), the dashboard
is well-formed Grafana JSON, and every metric either names is one that real
``vic relay`` and ``vic vspc`` processes export (read from a scrape of each)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.daemons import Daemon, free_port
from tests.support.vic_cli import REPO

PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "vic-channel.rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "vic-channel.json"
OURS = re.compile(r"\b((?:relay|vspc|agent|vic_channel)_[a-z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="no promtool (Debian package: prometheus)"
)


@needs_promtool
def test_promtool_check_rules() -> None:
    assert promtool is not None
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"SUCCESS: (\d+) rules found", r.stdout)


@needs_promtool
def test_promtool_test_rules() -> None:
    assert promtool is not None
    r = subprocess.run(
        [promtool, "test", "rules", "vic-channel.rules.test.yml"],
        capture_output=True,
        text=True,
        cwd=PROMETHEUS,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def rule_exprs() -> list[str]:
    return re.findall(r"^\s+expr: (.+)$", RULES.read_text(), re.MULTILINE)


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panel_exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert dash["uid"] == "vic-channel" and dash["title"]
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "instance"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) and g[k] >= 0 for k in ("h", "w", "x", "y")), p
        assert g["x"] + g["w"] <= 24, f"{p['title']} sticks out"
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["type"] == "timeseries" and p["datasource"]["uid"] == "${datasource}"
        targets = p["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets)
        for t in targets:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert OURS.search(t["expr"]), f"{p['title']}: names none of our metrics"


async def _exported(tmp_path: Path) -> set[str]:
    """Every metric name a vspc and a relay with a peer link table expose at start,
    labelled families without a sample yet included (their ``# TYPE`` lines)."""
    vspc_port, relay_port = free_port(), free_port()
    vspc = {
        "listen": {"port": 0},
        "console": {"socket": str(tmp_path / "c.sock"), "log-dir": str(tmp_path / "logs")},
        "metrics": {"port": vspc_port},
    }
    relay = {
        "host": "esx-01",
        "egress": {"default": {"kind": "tcp", "host": "127.0.0.1", "port": 13371}},
        "peer": {"admin-socket": str(tmp_path / "relay.sock")},
        "vspc": [{"name": "vspc", "port": 0}],
        "metrics": {"port": relay_port},
    }
    names: set[str] = set()
    for program, config, port in (("vspc", vspc, vspc_port), ("relay", relay, relay_port)):
        d = Daemon(program, program, config, tmp_path)
        try:
            await d.start()
            text = await _scrape(port)
        finally:
            await d.finish()
        for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
            names.add(name)
            if kind == "histogram":
                names.update(name + s for s in HISTOGRAM_SUFFIXES)
    return names


async def _scrape(port: int) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = bytearray()
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                body += chunk
    head, _, text = bytes(body).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return text.decode()


async def test_every_metric_named_is_exported(tmp_path: Path) -> None:
    exported = await _exported(tmp_path)
    assert {"relay_streams_active", "vspc_bytes_total"} <= exported  # the scrape worked
    assert "relay_streams_activ" not in exported  # names, not prefixes
    for where, exprs in (("dashboard", panel_exprs(dashboard())), ("rules", rule_exprs())):
        named = {m for e in exprs for m in OURS.findall(e)}
        assert named, where
        missing = named - exported
        assert not missing, f"{where} names metrics no daemon exports: {sorted(missing)}"
