"""CPU time the hypervisor stole from this machine, and its load: context for a bench's
figures.

On a VM guest that shares its host, the hypervisor runs other guests on this
one's CPUs now and then (``steal`` in /proc/stat); latencies and throughputs
measured meanwhile carry that noise, and so do other processes on this machine
(the 1-minute load average). Every bench records both the same way: a ``Watch``
started before its first measurement, and ``stamp`` adding to the JSON result's
``environment``: ``cpu_steal`` (the stolen share of CPU time over the whole run),
``loadavg_start`` and ``loadavg_end`` (os.getloadavg(), 1-, 5- and 15-minute).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


def cpu_ticks() -> tuple[int, int]:
    """(stolen, total) CPU ticks of this machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return fields[7], sum(fields)


def steal_since(start: tuple[int, int]) -> float:
    """The stolen share of all CPU time since ``start`` (from ``cpu_ticks``)."""
    stolen, total = cpu_ticks()
    return (stolen - start[0]) / max(1, total - start[1])


@dataclass
class Watch:
    """Started at a bench's start: the steal counters and the load then."""

    ticks: tuple[int, int] = field(default_factory=cpu_ticks)
    loadavg_start: list[float] = field(default_factory=lambda: list(os.getloadavg()))

    def record(self) -> dict[str, Any]:
        """Steal since the start, the load at the start and now."""
        return {
            "cpu_steal": steal_since(self.ticks),
            "loadavg_start": self.loadavg_start,
            "loadavg_end": list(os.getloadavg()),
        }


def stamp(result: dict[str, Any], watch: Watch) -> dict[str, Any]:
    """``result`` with ``watch``'s record merged into its ``environment`` (created if
    missing): call it just before writing the JSON."""
    env = result.setdefault("environment", {})
    env.update(watch.record())
    return result


def describe(result: dict[str, Any]) -> str:
    """``load 1.2 -> 0.9, steal 3%``: a run's environment for a printed report."""
    env = result.get("environment") or {}
    if "cpu_steal" not in env or "loadavg_start" not in env:
        return "load ?, steal ?"
    a, b = env["loadavg_start"][0], env.get("loadavg_end", env["loadavg_start"])[0]
    return f"load {a:.1f} -> {b:.1f}, steal {env['cpu_steal']:.0%}"
