"""bench/_goals.py (issue 16's goals as data) and bench/run-all's verdict on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import _goals
import _run_all
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def relay(pump: float, floor_cpu: float) -> dict[str, Any]:
    def kind() -> dict[str, Any]:
        return {
            "pump": {"gib_per_s": pump, "cpu_s_per_gib": 1.0},
            "splice-floor": {"gib_per_s": 1.0, "cpu_s_per_gib": floor_cpu},
        }

    return {"summary": {"tcp": kind(), "unix": kind()}}


def met_everywhere() -> dict[str, dict[str, Any]]:
    """Results that meet every goal (each just inside its bound)."""
    lat = {"begin_goahead_ms": {"p50": 0.18, "p99": 0.34}}
    vmware = {"begin_goahead_ms": {"p50": 0.19, "p99": 0.35}}
    return {
        "mesh_two_hop": {
            "ratios": {"tls_ours_over_socat_tls": 0.8, "plain_ours_over_socat_plain": 1.0}
        },
        "vspc_scale": {
            "summary": {
                "begin_goahead_kernel_p99_ms": 2.0,
                "direct_kernel_p99_ms": 1.0,
                "rss_kib_per_vm": 7.0,
            }
        },
        _goals.IDLE_9000: {"runs": {"vspc": lat, "vmware": vmware}},
        "vspc_throughput": {
            "summary": {"text": {"vspc_vs_socat": 1.0}, "binary": {"vspc_vs_socat": 0.8}}
        },
        "relay_throughput": relay(0.97, 1 / 1.05),
    }


def write(d: Path, results: dict[str, dict[str, Any]]) -> Path:
    for name, r in results.items():
        (d / f"{name}.json").write_text(json.dumps(r))
    return d


def verdicts(d: Path) -> dict[str, bool | None]:
    return {g.measure: met for g, _, met, _ in _goals.evaluate(d)}


def test_every_goal_met_at_its_bound(tmp_path: Path) -> None:
    write(tmp_path, met_everywhere())
    assert set(verdicts(tmp_path).values()) == {True}
    lines, ok = _goals.table(tmp_path)
    assert ok and len(lines) == 2 + len(_goals.GOALS)
    assert all(line.endswith("| yes |") for line in lines[2:])


@pytest.mark.parametrize(
    ("file", "path", "value", "measure"),
    [
        ("mesh_two_hop", ("ratios", "tls_ours_over_socat_tls"), 0.79, "mTLS"),
        ("mesh_two_hop", ("ratios", "plain_ours_over_socat_plain"), 0.99, "plaintext"),
        ("vspc_scale", ("summary", "begin_goahead_kernel_p99_ms"), 2.01, "kernel p99"),
        ("vspc_scale", ("summary", "rss_kib_per_vm"), 7.1, "RSS per VM"),
        ("vspc_throughput", ("summary", "text", "vspc_vs_socat"), 0.99, "text"),
        ("vspc_throughput", ("summary", "binary", "vspc_vs_socat"), 0.79, "binary"),
        (_goals.IDLE_9000, ("runs", "vspc", "begin_goahead_ms", "p99"), 0.35, "p99 / VMware"),
        ("relay_throughput", ("summary", "unix", "pump", "gib_per_s"), 0.96, "Unix: pump"),
        ("relay_throughput", ("summary", "tcp", "pump", "cpu_s_per_gib"), 1.1, "TCP: pump"),
    ],
)
def test_a_figure_past_its_bound_misses(
    tmp_path: Path, file: str, path: tuple[str, ...], value: float, measure: str
) -> None:
    results = met_everywhere()
    d: Any = results[file]
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    v = verdicts(write(tmp_path, results))
    missed = [m for m, met in v.items() if met is False]
    assert missed and all(measure in m for m in missed), missed
    assert not _goals.table(tmp_path)[1]


def test_relay_goals_prefer_the_paired_median(tmp_path: Path) -> None:
    """relay_throughput's goal figures: the median of the per-round pump/floor ratios
    where the result has them (the ratio of medians only for older results)."""
    results = met_everywhere()
    for kind in ("tcp", "unix"):
        s = results["relay_throughput"]["summary"][kind]
        s["pump"]["cpu_s_per_gib"] = 1.3  # the ratio of medians misses...
        s["paired"] = {"pump_vs_floor_throughput": 0.98, "pump_vs_floor_cpu_per_gib": 1.04}
    assert set(verdicts(write(tmp_path, results)).values()) == {True}  # ...the pairs meet
    results["relay_throughput"]["summary"]["unix"]["paired"]["pump_vs_floor_throughput"] = 0.9
    v = verdicts(write(tmp_path, results))
    assert [m for m, met in v.items() if met is False] == [
        "one hop Unix: pump / splice floor, throughput (paired median)"
    ]


def test_mesh_goals_prefer_the_paired_median(tmp_path: Path) -> None:
    """mesh_two_hop's goal figures: the median of the per-round ours/socat ratios where
    the result has them (the ratio of medians only for older results)."""
    results = met_everywhere()
    m = results["mesh_two_hop"]
    m["ratios"] = {"tls_ours_over_socat_tls": 0.7, "plain_ours_over_socat_plain": 0.9}
    m["paired_ratios"] = {"tls_ours_over_socat_tls": 0.85, "plain_ours_over_socat_plain": 1.01}
    assert set(verdicts(write(tmp_path, results)).values()) == {True}
    m["paired_ratios"]["plain_ours_over_socat_plain"] = 0.95
    v = verdicts(write(tmp_path, results))
    assert [k for k, met in v.items() if met is False] == [
        "peer link, two hops, plaintext: ours / socat plain (paired median)"
    ]


def test_missing_results_are_not_measured(tmp_path: Path) -> None:
    results = met_everywhere()
    del results[_goals.IDLE_9000]["runs"]["vmware"]  # a run without VMware's vSPC
    del results["mesh_two_hop"]
    v = verdicts(write(tmp_path, results))
    assert [m for m, met in v.items() if met is None] == [
        g.measure for g in _goals.GOALS if g.file in ("mesh_two_hop", _goals.IDLE_9000)
    ]
    lines, ok = _goals.table(tmp_path)
    assert not ok and sum("| not measured | " in line for line in lines) == 4


def test_a_smoke_run_judges_nothing(tmp_path: Path) -> None:
    results = met_everywhere()
    smoke = {f"{k}-smoke": {**v, "smoke": True} for k, v in results.items()}
    lines, ok = _goals.table(write(tmp_path, smoke))
    assert not ok
    assert all(line.endswith("| smoke run: no verdict |") for line in lines[2:])


def test_run_all_check_exits_1_only_on_a_missed_goal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VIC_BENCH_RESULTS", str(tmp_path))
    results = met_everywhere()
    write(tmp_path, results)
    assert _run_all.main(["--report", "--check"]) == 0
    results["vspc_scale"]["summary"]["rss_kib_per_vm"] = 9.6
    write(tmp_path, results)
    assert _run_all.main(["--report"]) == 0  # without --check: 0 regardless
    assert _run_all.main(["--report", "--check", "--results", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "| vSPC 16,000 VMs: RSS per VM | 9.6 KiB | <= 7 KiB | no |" in out


def test_run_all_runs_every_bench_and_feeds_every_goal() -> None:
    scripts = {p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_")}
    assert {s.script for s in _run_all.PLAN} == scripts
    assert {g.file for g in _goals.GOALS} <= {s.name for s in _run_all.PLAN}
    assert sum(s.minutes for s in _run_all.PLAN) <= 16  # documented: about 15 minutes
