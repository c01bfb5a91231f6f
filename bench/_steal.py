"""CPU time the hypervisor stole from this machine: context for a bench's figures.

On a VM guest that shares its host, the hypervisor runs other guests on this
one's CPUs now and then (``steal`` in /proc/stat); latencies and throughputs
measured meanwhile carry that noise. Benches record the stolen share of CPU
time over what they measured.
"""

from __future__ import annotations


def cpu_ticks() -> tuple[int, int]:
    """(stolen, total) CPU ticks of this machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return fields[7], sum(fields)


def steal_since(start: tuple[int, int]) -> float:
    """The stolen share of all CPU time since ``start`` (from ``cpu_ticks``)."""
    stolen, total = cpu_ticks()
    return (stolen - start[0]) / max(1, total - start[1])
