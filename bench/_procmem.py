"""Memory of processes as /proc reports it (RSS and PSS), for the memory benches."""

from __future__ import annotations

import os
import time


def mem_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB."""
    rss = pss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pss = rss
    return rss, pss


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    return out


def settle(pid: int, tries: int = 20) -> tuple[int, int]:
    """Memory once it stops moving (the relay finishes admitting streams)."""
    last = mem_kib(pid)
    for _ in range(tries):
        time.sleep(0.15)
        cur = mem_kib(pid)
        if abs(cur[0] - last[0]) < 16:
            return cur
        last = cur
    return last
