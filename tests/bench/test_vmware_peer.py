"""VMware's vSPC as vspc_scale.py's ``vmware`` mode (bench/_vmware_vspc.py).

The peer is installed only by bench/fetch-peers (into .cache/bench-peers/, outside the
project's .venv): without it the smoke run is skipped, saying so, and the bench
records a note instead of failing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / "bench" / "_vmware_vspc.py"
SCALE = ROOT / "bench" / "vspc_scale.py"


def _run(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _peer_status() -> str:
    return _run(PEER, env=dict(os.environ)).stdout.strip()


def test_missing_peer_is_a_note_not_a_failure(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        MPLBACKEND="Agg",
        VIC_BENCH_RESULTS=str(tmp_path),
        VIC_BENCH_PEERS=str(tmp_path / "no-peers"),
    )
    status = _run(PEER, env=env)
    assert status.returncode == 0
    assert "not installed" in status.stdout and "bench/fetch-peers" in status.stdout
    proc = _run(SCALE, "--smoke", "--modes", "direct,vmware", env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "vspc_scale.json").read_text())
    assert list(data["runs"]) == ["direct"]
    assert any(n.startswith("vmware not measured:") for n in data["notes"]), data["notes"]


def test_vmware_mode_answers_begin_with_goahead(tmp_path: Path) -> None:
    status = _peer_status()
    if not status.startswith("VMware's vSPC ready"):
        pytest.skip(f"VMware's vSPC peer unavailable: {status}")
    env = dict(os.environ, MPLBACKEND="Agg", VIC_BENCH_RESULTS=str(tmp_path))
    proc = _run(SCALE, "--smoke", "--modes", "vmware", env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = json.loads((tmp_path / "vspc_scale.json").read_text())["runs"]["vmware"]
    assert run["connected"] == 50
    lat = run["begin_goahead_ms"]
    # every timed vMotion got its GOAHEAD (a broken one would count in "failed")
    assert lat["n"] + lat["failed"] == 5 and lat["n"] >= 4
    assert 0 < lat["p50"] <= lat["p99"]
    assert run["rss_kib_after_connect"] > 0
    assert run["vmware_peer"]["peer_ok_with_secret"] >= lat["n"]
