"""Redraw every bench's PNG from its JSON in bench/results (or ``$VIC_BENCH_RESULTS``),
without running anything: after a change to the plots, or to check one by eye.

    .venv/bin/python bench/_replot.py [NAME ...]     # default: every JSON with a plotter

Each bench's ``plot`` takes what its ``main`` passes it: the whole result, or one part.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import results_dir

# the part of a bench's JSON its plot takes (None: all of it)
PART: dict[str, str | None] = {
    "agent_console": None,
    "agent_exit_latency": None,
    "docker_endpoint": None,
    "mesh_two_hop": None,
    "relay_idle": None,
    "relay_latency": "summary",
    "relay_throughput": "summary",
    "session_core": "median",
    "session_exec": None,
    "vspc_scale": None,
    "vspc_throughput": None,
}


def replot(js: Path) -> str:
    """Redraw ``js``'s PNG next to it; what was done, in one line."""
    data = json.loads(js.read_text())
    bench = data.get("bench", js.stem)
    if bench not in PART:
        return f"{js.name}: no plotter for {bench!r}"
    if data.get("skipped"):
        return f"{js.name}: skipped run ({data['skipped']}), nothing to draw"
    plot: Callable[[Any, Path], None] = importlib.import_module(bench).plot
    part = PART[bench]
    plot(data if part is None else data[part], js.with_suffix(".png"))
    return f"{js.name} -> {js.with_suffix('.png').name}"


def main(names: list[str]) -> int:
    d = results_dir()
    files = [d / f"{n}.json" for n in names] if names else sorted(d.glob("*.json"))
    for js in files:
        print(replot(js))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
