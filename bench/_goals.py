"""Issue 16's goals, as data: what each measures, where its figure lives in
bench/results/*.json, and the bound it must meet.

``bench/run-all`` prints them as a table (measure, now, goal, met) after running
every bench; ``python bench/_goals.py [RESULTS_DIR] [--check]`` prints the same
table from the files already there.

Benches run as scripts with ``bench/`` on ``sys.path``, so this imports as ``_goals``.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Result = dict[str, Any]
Figure = Callable[[Result], float | None]

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
}


def get(d: Any, *path: str) -> Any:
    """``d[path[0]][path[1]]...``, or None where a key is missing."""
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def ratio(a: Any, b: Any) -> float | None:
    x, y = num(a), num(b)
    return None if x is None or y is None or y == 0 else x / y


def at(*path: str) -> Figure:
    """The number at ``path`` in the result."""
    return lambda r: num(get(r, *path))


def over(top: Sequence[str], bottom: Sequence[str]) -> Figure:
    """The number at ``top`` over the number at ``bottom``."""
    return lambda r: ratio(get(r, *top), get(r, *bottom))


@dataclass(frozen=True)
class Goal:
    measure: str
    file: str  # bench/results/<file>.json (or <file>-smoke.json from a smoke run)
    figure: Figure
    op: str  # ">=", "<=" or "<": how the figure must compare with ``bound``
    bound: float
    unit: str  # "x" (a ratio), " ms", " KiB"

    def goal(self) -> str:
        return f"{self.op} {self.bound:g}{self.unit}"

    def now(self, result: Result | None) -> float | None:
        return None if result is None else self.figure(result)

    def met(self, value: float | None) -> bool | None:
        """True or False; None where nothing was measured."""
        return None if value is None else OPS[self.op](value, self.bound)

    def show(self, value: float | None) -> str:
        if value is None:
            return "not measured"
        return f"{value:.2f}{self.unit}" if self.unit == "x" else f"{value:.3g}{self.unit}"


def _floor(kind: str, what: str) -> Figure:
    """pump / splice floor: the median of the per-round ratios (relay_throughput runs the
    two back to back each round, so the ratio cancels round-to-round drift); from
    results without them, the ratio of the two medians."""
    s = ("summary", kind)
    key = {"gib_per_s": "throughput", "cpu_s_per_gib": "cpu_per_gib"}[what]
    of_medians = over((*s, "pump", what), (*s, "splice-floor", what))

    def figure(r: Result) -> float | None:
        v = num(get(r, *s, "paired", f"pump_vs_floor_{key}"))
        return of_medians(r) if v is None else v

    return figure


def _mesh(key: str) -> Figure:
    """ours / socat over two hops: the median of the per-round ratios (contenders run
    interleaved and rotated); from results without them, the ratio of the medians."""
    of_medians = at("ratios", key)

    def figure(r: Result) -> float | None:
        v = num(get(r, "paired_ratios", key))
        return of_medians(r) if v is None else v

    return figure


IDLE_9000 = "vspc_scale_idle_9000"  # vspc_scale.py --vms 9000 --interval 600 (run-all)

GOALS: tuple[Goal, ...] = (
    Goal(
        "peer link, two hops, mTLS: ours / socat's OpenSSL chain (paired median)",
        "mesh_two_hop",
        _mesh("tls_ours_over_socat_tls"),
        ">=",
        0.8,
        "x",
    ),
    Goal(
        "peer link, two hops, plaintext: ours / socat plain (paired median)",
        "mesh_two_hop",
        _mesh("plain_ours_over_socat_plain"),
        ">=",
        1.0,
        "x",
    ),
    Goal(
        "vSPC 16,000 VMs with console traffic: BEGIN->GOAHEAD kernel p99 / bare server's",
        "vspc_scale",
        over(("summary", "begin_goahead_kernel_p99_ms"), ("summary", "direct_kernel_p99_ms")),
        "<=",
        2.0,
        "x",
    ),
    Goal(
        "vSPC 16,000 VMs with console traffic: BEGIN->GOAHEAD kernel p99",
        "vspc_scale",
        at("summary", "begin_goahead_kernel_p99_ms"),
        "<=",
        2.0,
        " ms",
    ),
    Goal(
        "vSPC 9,000 idle VMs: BEGIN->GOAHEAD p50 / VMware's vSPC's",
        IDLE_9000,
        over(
            ("runs", "vspc", "begin_goahead_ms", "p50"),
            ("runs", "vmware", "begin_goahead_ms", "p50"),
        ),
        "<",
        1.0,
        "x",
    ),
    Goal(
        "vSPC 9,000 idle VMs: BEGIN->GOAHEAD p99 / VMware's vSPC's",
        IDLE_9000,
        over(
            ("runs", "vspc", "begin_goahead_ms", "p99"),
            ("runs", "vmware", "begin_goahead_ms", "p99"),
        ),
        "<",
        1.0,
        "x",
    ),
    Goal(
        "vSPC console, text: ours / socat",
        "vspc_throughput",
        at("summary", "text", "vspc_vs_socat"),
        ">=",
        1.0,
        "x",
    ),
    Goal(
        "vSPC console, binary: ours / socat",
        "vspc_throughput",
        at("summary", "binary", "vspc_vs_socat"),
        ">=",
        0.8,
        "x",
    ),
    Goal(
        "one hop TCP: pump / splice floor, throughput (paired median)",
        "relay_throughput",
        _floor("tcp", "gib_per_s"),
        ">=",
        0.97,
        "x",
    ),
    Goal(
        "one hop TCP: pump / splice floor, CPU per GiB (paired median)",
        "relay_throughput",
        _floor("tcp", "cpu_s_per_gib"),
        "<=",
        1.05,
        "x",
    ),
    Goal(
        "one hop Unix: pump / splice floor, throughput (paired median)",
        "relay_throughput",
        _floor("unix", "gib_per_s"),
        ">=",
        0.97,
        "x",
    ),
    Goal(
        "one hop Unix: pump / splice floor, CPU per GiB (paired median)",
        "relay_throughput",
        _floor("unix", "cpu_s_per_gib"),
        "<=",
        1.05,
        "x",
    ),
    Goal(
        "vSPC 16,000 VMs: RSS per VM",
        "vspc_scale",
        at("summary", "rss_kib_per_vm"),
        "<=",
        7.0,
        " KiB",
    ),
)


def load(d: Path, name: str) -> Result | None:
    """bench/results/<name>.json, or the smoke run's <name>-smoke.json."""
    for stem in (name, f"{name}-smoke"):
        p = d / f"{stem}.json"
        if p.is_file():
            data = json.loads(p.read_text())
            return data if isinstance(data, dict) else None
    return None


Row = tuple[str, str, str, str]


def evaluate(d: Path) -> list[tuple[Goal, float | None, bool | None, bool]]:
    """Every goal: (goal, its figure now, met?, from a smoke run?)."""
    out = []
    for g in GOALS:
        r = load(d, g.file)
        v = g.now(r)
        out.append((g, v, g.met(v), bool(get(r, "smoke"))))
    return out


def table(d: Path) -> tuple[list[str], bool]:
    """The goal table as markdown lines, and whether every goal was measured and met
    (a smoke run's figures meet nothing)."""
    lines = ["| measure | now | goal | met |", "|---|---|---|---|"]
    ok = True
    for g, v, met, smoke in evaluate(d):
        if smoke:
            word = "smoke run: no verdict"
        else:
            word = {True: "yes", False: "no", None: "not measured"}[met]
        ok = ok and met is True and not smoke
        lines.append(f"| {g.measure} | {g.show(v)} | {g.goal()} | {word} |")
    return lines, ok


def main(argv: Sequence[str]) -> int:
    args = [a for a in argv if a != "--check"]
    d = Path(args[0]) if args else Path(__file__).resolve().parent / "results"
    lines, ok = table(d)
    print("\n".join(lines))
    return 1 if "--check" in argv and not ok else 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
