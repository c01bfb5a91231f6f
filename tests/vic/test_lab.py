"""`vic lab` runs end to end and every console is byte-exact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_lab_runs_and_checks_every_byte(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vic.cli", "lab", "--lines", "30", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "LAB RESULT: all consoles byte-exact" in out
    assert "vMotion esx-a -> esx-b" in out and "aborted" in out
    for kind in ("raw TCP", "named pipe", "FIFO", "pty", "hybrid vsock", "through both relays"):
        assert kind in out
    # the console logs on disk hold the bytes too
    assert any((tmp_path / "consoles").glob("*.log"))
