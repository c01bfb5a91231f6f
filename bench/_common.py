"""What every bench shares: where results go, a free port, CPU time, the fd limit and how a
target is judged.

Benches run as scripts with ``bench/`` on ``sys.path``, so this imports as ``_common``.
"""

from __future__ import annotations

import os
import resource
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def results_dir() -> Path:
    """bench/results, or ``$VIC_BENCH_RESULTS`` (created if missing)."""
    d = Path(os.environ.get("VIC_BENCH_RESULTS", ROOT / "bench" / "results"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) of a process, from schedstat (ns);
    0.0 once the process is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # thread exited meanwhile
            continue
    return total / 1e9


def raise_nofile(n: int = 20_000) -> None:
    """Raise the soft open-files limit to ``n`` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(n, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def verdict(ok: bool, smoke: bool) -> str:
    """How a target came out: a smoke run's tiny samples judge nothing."""
    if smoke:
        return "smoke run: no verdict"
    return "met" if ok else "NOT met"
