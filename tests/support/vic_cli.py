"""`vic relay` / `vic vspc` run once on a config file, as an operator would, and
the one stderr line a bad config must cost (exit status 2, naming the TOML key)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VIC = REPO / ".venv" / "bin" / "vic"


def vic(*args: str) -> subprocess.CompletedProcess[str]:
    """``vic ARGS`` to its end (60 s at the most), output captured as text."""
    exe = [str(VIC)] if VIC.exists() else [sys.executable, "-m", "vic.cli"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def run_vic(program: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``vic PROGRAM --config CONFIG ARGS`` to its end (60 s at the most)."""
    return vic(program, "--config", str(config), *args)


def assert_one_line(r: subprocess.CompletedProcess[str], key: str) -> str:
    """Exit status 2 and one short stderr line, ``config error: KEY: ...``; that line."""
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert f"config error: {key}:" in lines[0], lines[0]
    assert len(lines[0]) < 400
    return lines[0]
