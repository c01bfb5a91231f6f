"""Every bench runs once in its tiny --smoke mode, through bench/run-all, so none of them
(nor run-all) rots."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import _run_all
import pytest

ROOT = Path(__file__).resolve().parents[2]
# one step per bench script (vspc_scale's 9,000-VM step runs the same code as its own)
STEPS = list({s.script: s for s in reversed(_run_all.PLAN)}.values())[::-1]


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_bench_smoke(step: _run_all.Step, tmp_path: Path) -> None:
    env = dict(os.environ, MPLBACKEND="Agg", VIC_BENCH_RESULTS=str(tmp_path))
    run_all = [sys.executable, str(ROOT / "bench" / "_run_all.py"), "--smoke", "--check"]
    proc = subprocess.run(
        [*run_all, "--only", step.name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, (
        f"{step.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    # a smoke run's tiny samples judge no target
    assert not re.search(r"\b(NOT )?met$", proc.stdout, re.M), proc.stdout
    assert "issue 16's goals" in proc.stdout and "| no |" not in proc.stdout
    results = list(tmp_path.glob("*.json"))
    assert results, f"{step.name} wrote no JSON result into $VIC_BENCH_RESULTS"
    for r in results:
        data = json.loads(r.read_text())
        if "skipped" in data:
            continue
        env_ = data["environment"]  # the load and steal beside every figure
        assert {"cpu_steal", "loadavg_start", "loadavg_end"} <= set(env_), r.name
        assert r.with_suffix(".png").is_file(), f"{r.name} has no plot"


def test_summary_table_reads_every_committed_result() -> None:
    """bench/_summary.py (the README's table) understands the committed results."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_summary", ROOT / "bench" / "_summary.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.rows(ROOT / "bench" / "results")
    measures = " ".join(r[0] for r in rows)
    for word in (
        "vSPC console throughput",
        "16,000 VMs",
        "relay one hop",
        "idle streams",
        "mesh two hops",
        "agent console",
    ):
        assert word in measures


def test_replot_redraws_every_committed_result(tmp_path: Path) -> None:
    """bench/_replot.py draws each committed JSON's PNG again, without running a bench."""
    for js in (ROOT / "bench" / "results").glob("*.json"):
        shutil.copy(js, tmp_path)
    env = dict(os.environ, MPLBACKEND="Agg", VIC_BENCH_RESULTS=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "_replot.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    drawn = {p.stem for p in tmp_path.glob("*.png")}
    assert drawn == {p.stem for p in tmp_path.glob("*.json")}, proc.stdout
    assert all(p.stat().st_size > 10_000 for p in tmp_path.glob("*.png"))
