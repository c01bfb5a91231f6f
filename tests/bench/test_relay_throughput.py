"""bench/relay_throughput.py: the pump and the splice floor run back to back in every
round, and the goal's figure is the median of the per-round ratios."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import relay_throughput as rt


def fake(gib_per_s: float, cpu: float | None) -> dict[str, Any]:
    return {"seconds": 1.0, "gib_per_s": gib_per_s, "cpu_seconds": cpu, "cpu_s_per_gib": cpu}


def test_pump_and_floor_run_back_to_back_first_alternating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[tuple[str, str]] = []

    def transfer(kind: str, c: str, size: int, tmpdir: Path) -> dict[str, Any]:
        ran.append((kind, c))
        return fake(float(len(ran)), None if c == "direct" else 1.0)

    monkeypatch.setattr(rt, "one_transfer", transfer)
    reps = 4
    runs = rt.measure(["tcp", "unix"], argparse.Namespace(size=1, reps=reps))
    per_round = 2 * len(rt.CONTENDERS)
    assert len(ran) == reps * per_round
    for rnd in range(reps):
        seq = ran[rnd * per_round : (rnd + 1) * per_round]
        for kind in ("tcp", "unix"):
            i = seq.index((kind, "pump" if rnd % 2 == 0 else "splice-floor"))
            assert seq[i + 1] == (kind, "splice-floor" if rnd % 2 == 0 else "pump")
    for kind in ("tcp", "unix"):
        assert set(runs[kind]) == set(rt.CONTENDERS)
        pump, floor = runs[kind]["pump"], runs[kind]["splice-floor"]
        # each round's pair is in the same slot of both lists, a run apart
        for rnd, (p, f) in enumerate(zip(pump, floor, strict=True)):
            assert p["gib_per_s"] - f["gib_per_s"] == (1 if rnd % 2 else -1)


def test_the_goal_is_judged_on_the_median_of_paired_ratios() -> None:
    # CPU per GiB drifts by a third between rounds; the pump is 1.02x the floor in each
    floor_cpu = [0.22, 0.33, 0.22, 0.33, 0.33]
    pump_cpu = [1.02 * c for c in floor_cpu]
    pump_cpu[1], pump_cpu[3] = 1.02 * 0.22, 1.02 * 0.22  # two rounds where the pump was lucky
    runs: dict[str, list[dict[str, Any]]] = {
        "direct": [fake(3.0, None)] * 5,
        "socat": [fake(1.5, 0.5)] * 5,
        "pump-copy": [fake(1.0, 1.0)] * 5,
        "pump": [fake(2.0, c) for c in pump_cpu],
        "splice-floor": [fake(2.0, c) for c in floor_cpu],
    }
    s = rt.summarize(runs)
    pp = s["paired"]
    assert pp["rounds"] == 5
    assert pp["pump_vs_floor_cpu_per_gib"] == pytest.approx(1.02)
    assert pp["pump_vs_floor_throughput"] == pytest.approx(1.0)
    assert s["ratios"]["pump_vs_floor_cpu_per_gib"] == pytest.approx(1.02 * 0.22 / 0.33)
    assert s["targets"]["floor_cpu<=1.05"] and s["targets"]["floor_throughput>=0.97"]
    assert len(pp["per_round"]["cpu_per_gib"]) == 5
