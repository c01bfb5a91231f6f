"""The vSPC's own figures in the scale bench: histogram quantiles from its metrics
text, and vspc.loopwatch's event-loop figures."""

from __future__ import annotations

from typing import Any


def histogram_quantiles(metrics: str, name: str, qs: tuple[float, ...]) -> dict[str, Any]:
    buckets: list[tuple[float, float]] = []
    for line in metrics.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append(
                (float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1]))
            )
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return {"count": 0}
    total = buckets[-1][1]
    out: dict[str, Any] = {"count": total}
    for q in qs:
        for bound, c in buckets:
            if c >= q * total:
                out[f"p{q * 100:g}_le_seconds"] = bound
                break
    return out


def loop_figures(text: str) -> dict[str, Any]:
    """vspc.loopwatch's figures (when on): the longest step and batch while the vMotions
    ran, step and batch quantiles, and the task kinds with the longest steps."""
    out: dict[str, Any] = {}
    tasks: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        for gauge in ("longest_step", "longest_batch"):
            if line.startswith(f"vspc_event_loop_{gauge}_seconds "):
                out[f"{gauge}_ms"] = float(line.rsplit(" ", 1)[1]) * 1e3
        for kind in ("longest_step", "seconds"):
            prefix = f"vspc_event_loop_task_{kind}" + ("_seconds{" if kind != "seconds" else "{")
            if line.startswith(prefix):
                name = line.split('task="', 1)[1].split('"', 1)[0]
                tasks.setdefault(name, {})[kind] = float(line.rsplit(" ", 1)[1])
    if not out:
        return out
    for what in ("step", "batch"):
        out[what] = histogram_quantiles(text, f"vspc_event_loop_{what}_seconds", (0.5, 0.99, 0.999))
    top = sorted(tasks.items(), key=lambda kv: -kv[1].get("longest_step", 0.0))[:8]
    out["tasks_longest_step_ms"] = {k: v.get("longest_step", 0.0) * 1e3 for k, v in top}
    busy = sorted(tasks.items(), key=lambda kv: -kv[1].get("seconds", 0.0))[:8]
    out["tasks_seconds"] = {k: v.get("seconds", 0.0) for k, v in busy}
    return out
