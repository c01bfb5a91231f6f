"""README.md stays true: its set-up commands exist, CI runs the test one, and its
sample config passes `vic vspc --check`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_setup_commands_exist_and_ci_runs_the_test_command() -> None:
    assert "    ./scripts/lab\n" in README and "    ./scripts/test\n" in README
    for script in ("scripts/lab", "scripts/test", "scripts/bootstrap"):
        assert (ROOT / script).stat().st_mode & 0o111, script
    assert "./scripts/test" in (ROOT / ".ci/run").read_text()


def test_sample_vspc_config_passes_check(tmp_path: Path) -> None:
    m = re.search(r"A minimal `vspc.toml`:\n\n```toml\n(.*?)```", README, re.S)
    assert m, "README lost its sample vspc.toml"
    cfg = tmp_path / "vspc.toml"
    cfg.write_text(m.group(1))
    proc = subprocess.run([sys.executable, "-m", "vic.cli", "vspc", "--config", str(cfg), "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
