"""The production wheel (``pip wheel .``): the three programs, common and the ``vic``
CLI, with the licence; never the lab, the tests or the benches."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = (".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


@pytest.mark.slow
def test_wheel_has_the_programs_and_licence_but_no_lab(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: pip builds in the tree and leaves build/ behind
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*SKIP), symlinks=True)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("vic_channel-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {"common", "relay", "vspc", "guestagent", "vic"} <= tops
    assert not tops & {"tests", "bench"}
    assert "vic/cli.py" in names and "relay/__main__.py" in names
    assert not [n for n in names if n.startswith("vic/lab/")]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA")))
    assert b"License-Expression: Apache-2.0" in meta
    assert any(n.endswith("/licenses/LICENSE") for n in names)
