"""Process exit -> the appliance sees ``status`` in guestinfo (simulated file-backed store).

Each sample: the container process is ``cat <fifo>``; the bench (playing the
appliance) opens the FIFO, takes t0, closes it, so the process exits at once;
t1 is when its FileStoreWatcher sees ``guestinfo.vice..sessions|<id>.status``.

Contenders, same run, same machine, interleaved (bench/_rounds.py):
* ``direct``: the bench itself spawns ``cat <fifo>`` and waits for it (waitpid):
  the floor, what the kernel alone costs.
* ``minimal``: a tiny separate publisher process that spawns the command,
  waits for it and writes ``status`` into the store: the cost of the store and
  the watcher with no agent logic.
* ``agent``: a real ``vic agent`` process (file backend), sessions configured
  through guestinfo as the appliance would.

Reports p50/p99 per contender and the agent's added latency over ``minimal``
and ``direct``. Writes agent_exit_latency.json and .png under bench/results
(or $VIC_BENCH_RESULTS). ``--smoke``: 8 exits, one repetition.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _plots  # noqa: E402
import trio  # noqa: E402
from _common import results_dir  # noqa: E402
from _rounds import ainterleaved  # noqa: E402
from _steal import Watch, describe, stamp  # noqa: E402

from common.io.guestinfo.filestore import FileStore  # noqa: E402
from common.proto import guestinfo as gi  # noqa: E402
from vspc.guestinfo_watch import (  # noqa: E402
    FileStoreWatcher,
    VMState,
    configure_session,
    wait_for,
    wait_for_started,
)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


MINIMAL = r"""
import os, subprocess, sys, json
sys.path.insert(0, sys.argv[3])
from common.io.guestinfo.filestore import FileStore
from common.proto import guestinfo as gi
store, fifo_dir = FileStore(sys.argv[1]), sys.argv[2]
for line in sys.stdin:
    sid = line.strip()
    p = subprocess.Popen(["cat", os.path.join(fifo_dir, sid)], stdout=subprocess.DEVNULL)
    print("started", flush=True)
    rc = p.wait()
    store.update({gi.status_key(sid): str(rc)})
"""


def _popen(argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(argv, **kw)


def _open_fifo_and_release(path: str) -> float:
    fd = os.open(path, os.O_WRONLY)  # blocks until the process has it open
    t0 = time.perf_counter()
    os.close(fd)
    return t0


async def _seen_status(w: FileStoreWatcher, vm: str, sid: str) -> float:
    def pred(st: VMState) -> bool | None:
        return True if gi.status_key(sid) in st.values else None

    await wait_for(w, vm, pred, 30)
    return time.perf_counter()


async def bench_direct(tmp: Path, n: int) -> list[float]:
    out = []
    for i in range(n):
        fifo = tmp / f"d{i}"
        os.mkfifo(fifo)
        p = _popen(["cat", str(fifo)], stdout=subprocess.DEVNULL)
        t0 = await trio.to_thread.run_sync(_open_fifo_and_release, str(fifo))
        await trio.to_thread.run_sync(p.wait)
        out.append((time.perf_counter() - t0) * 1e6)
        fifo.unlink()
    return out


async def bench_minimal(tmp: Path, n: int) -> list[float]:
    w = FileStoreWatcher(tmp)
    store = w.store("minvm")
    store.update({"guestinfo.x": "1"})
    proc = _popen(
        [sys.executable, "-c", MINIMAL, str(store.path), str(tmp), str(ROOT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert proc.stdin is not None and proc.stdout is not None
    out = []
    try:
        for i in range(n):
            sid = f"m{i}"
            os.mkfifo(tmp / sid)
            proc.stdin.write(sid + "\n")
            proc.stdin.flush()
            await trio.to_thread.run_sync(proc.stdout.readline)
            async with trio.open_nursery() as nursery:
                t1_box: list[float] = []

                async def watch(sid: str = sid, box: list[float] = t1_box) -> None:
                    box.append(await _seen_status(w, "minvm", sid))

                nursery.start_soon(watch)
                t0 = await trio.to_thread.run_sync(_open_fifo_and_release, str(tmp / sid))
            out.append((t1_box[0] - t0) * 1e6)
            (tmp / sid).unlink()
    finally:
        proc.stdin.close()
        proc.wait(10)
    return out


async def bench_agent(tmp: Path, n: int) -> list[float]:
    conf = tmp / "agent.toml"
    store_path = tmp / "agentvm.json"
    conf.write_text(
        f'[guestinfo]\nbackend = "file"\npath = "{store_path}"\n'
        '[console]\ntransport = "none"\n[network]\npublish = false\n'
        '[agent]\nsubreaper = false\nlog-level = "warning"\n'
    )
    w = FileStoreWatcher(tmp)
    FileStore(store_path).update({"guestinfo.x": "1"})
    agent = _popen(
        [sys.executable, "-m", "vic.cli", "agent", "--config", str(conf)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out = []
    prev: str | None = None
    try:
        for i in range(n):
            sid = f"a{i}"
            os.mkfifo(tmp / sid)
            if prev is not None:  # the appliance forgets finished sessions
                st = FileStore(store_path).read()
                await w.write("agentvm", {k: None for k in st.values if f"sessions|{prev}" in k})
            await configure_session(
                w, "agentvm", gi.SessionConfig(id=sid, path="cat", args=("cat", str(tmp / sid)))
            )
            await wait_for_started(w, "agentvm", sid, 30)
            async with trio.open_nursery() as nursery:
                t1_box: list[float] = []

                async def watch(sid: str = sid, box: list[float] = t1_box) -> None:
                    box.append(await _seen_status(w, "agentvm", sid))

                nursery.start_soon(watch)
                t0 = await trio.to_thread.run_sync(_open_fifo_and_release, str(tmp / sid))
            out.append((t1_box[0] - t0) * 1e6)
            (tmp / sid).unlink()
            prev = sid
    finally:
        agent.terminate()
        agent.wait(10)
    return out


async def run(n: int, reps: int) -> dict[str, Any]:
    fns = {"direct": bench_direct, "minimal": bench_minimal, "agent": bench_agent}

    async def one(_: int, name: str) -> list[float]:
        with tempfile.TemporaryDirectory(prefix="vic-exitlat-") as d:
            return await fns[name](Path(d), n)

    per = await ainterleaved(reps, list(fns), one)
    summary: dict[str, Any] = {}
    for name, runs in per.items():
        allv = [x for r in runs for x in r]
        summary[name] = {
            "p50_us": pct(allv, 50),
            "p99_us": pct(allv, 99),
            "per_rep_p50_us": [pct(r, 50) for r in runs],
            "samples": len(allv),
        }
    a, m, d = summary["agent"], summary["minimal"], summary["direct"]
    summary["ratios"] = {
        "agent_p50_over_minimal_p50": a["p50_us"] / m["p50_us"],
        "agent_p99_over_minimal_p99": a["p99_us"] / m["p99_us"],
        "agent_added_p50_us_over_direct": a["p50_us"] - d["p50_us"],
    }
    return {"per_rep_samples_us": per, "summary": summary}


def plot(result: dict[str, Any], path: Path) -> None:
    plt = _plots.pyplot()
    s = result["summary"]
    names = ["direct", "minimal", "agent"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _plots.grouped(
        ax,
        names,
        {q: [s[n][f"{q}_us"] / 1000 for n in names] for q in ("p50", "p99")},
        fmt="{:.1f}",
        colours={"p50": _plots.OURS, "p99": _plots.OURS_ALT},
    )
    ax.set_ylabel("process exit -> appliance sees status (ms)")
    r = s.get("ratios", {})
    ax.set_title(
        "guestinfo exit latency (file-backed store; no socat path here)\n"
        f"agent/minimal: p50 {_plots.times(r.get('agent_p50_over_minimal_p50'))}, "
        f"p99 {_plots.times(r.get('agent_p99_over_minimal_p99'))}",
        fontsize=10,
    )
    _plots.finish(fig, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()
    n = args.n or (8 if args.smoke else 100)
    reps = args.reps or (1 if args.smoke else 3)
    watch = Watch()
    result = trio.run(run, n, reps)
    result["params"] = {"n": n, "reps": reps, "smoke": args.smoke}
    result["environment"] = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }
    stamp(result, watch)
    name = "agent_exit_latency" + ("-smoke" if args.smoke else "")
    out = results_dir() / f"{name}.json"
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    plot(result, results_dir() / f"{name}.png")
    s = result["summary"]
    for k in ("direct", "minimal", "agent"):
        print(f"{k:8s} p50 {s[k]['p50_us'] / 1000:8.2f} ms   p99 {s[k]['p99_us'] / 1000:8.2f} ms")
    r = s["ratios"]
    print(
        f"agent/minimal p50 {r['agent_p50_over_minimal_p50']:.2f}x  "
        f"p99 {r['agent_p99_over_minimal_p99']:.2f}x; "
        f"agent added over direct p50 {r['agent_added_p50_us_over_direct'] / 1000:.2f} ms"
    )
    print(describe(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
