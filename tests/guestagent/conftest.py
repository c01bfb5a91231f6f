"""Fixtures for guest agent tests: the vCenter simulator on a loopback port."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VCSIM = ROOT / ".cache" / "vcsim" / "vcsim"


@pytest.fixture(scope="session")
def vcsim_url() -> Iterator[str]:
    """Start govmomi's vcsim (built by scripts/build-vcsim) on 127.0.0.1:<free port>."""
    if not os.access(VCSIM, os.X_OK):
        pytest.skip("vcsim not built: run scripts/build-vcsim (needs golang-go + govmomi source)")
    proc = subprocess.Popen(
        [str(VCSIM), "-l", "127.0.0.1:0", "-stdin-eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.match(r"VCSIM_URL=(\S+)", line)
        if m is None:
            pytest.skip(f"vcsim did not start: {line!r}")
        yield m.group(1)
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.terminate()
        proc.wait(timeout=10)
