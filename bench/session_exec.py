"""Issue 13's sessions end to end, as real processes:

* exec throughput: `cat` of N MiB in the guest through the agent's tether -> `vic
  relay` (pipe ingress labelled ``session``) -> `vic vspc` (sessions) -> `vic console
  exec`, against the same bytes on today's raw console path (a relayed raw stream
  into the vSPC's console log) and through a socat relay; CPU per GiB of the tether,
  relay and appliance processes;
* keystroke echo round trips on a local pty: `vic console exec -t VM -- cat` against
  `vic console attach` on the raw path (the guest end echoing);
* handshake time (connecting to Established) and the vSPC's RSS per idle session at
  1,000 sessions from simulated tethers in a process of their own.

Contenders interleaved, several reps, medians and ratios; JSON and PNG into
bench/results (or $VIC_BENCH_RESULTS).

    .venv/bin/python bench/session_exec.py [--mib 256] [--reps 3] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _plots
from _common import results_dir
from _rounds import ainterleaved
from _session_chain import VM, Chain, chain, exec_ready, vic
from _session_echo import percentiles, raw_echo, session_echo
from _session_idle import idle_sessions
from _session_throughput import raw_console, session_cat, socat_relay
from _steal import Watch, describe, stamp

NAME = "session_exec"
LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-the-guest-writes!\n"


def make_data(path: Path, mib: int) -> int:
    """A text file of ``mib`` MiB (whole lines): its size."""
    block = LINE * (65536 // len(LINE))
    n = (mib << 20) // len(block)
    with open(path, "wb") as f:
        for _ in range(n):
            f.write(block)
    return n * len(block)


async def exec_floor(c: Chain) -> float:
    """Wall seconds of `vic console exec VM -- true`: the CLI's start and the exec."""
    t0 = time.monotonic()
    cmd = [*vic(), "console", "exec", "--socket", c.console, VM, "--", "true"]
    await trio.run_process(cmd, capture_stdout=True, capture_stderr=True)
    return time.monotonic() - t0


async def throughput(c: Chain, data: Path, size: int, reps: int) -> dict[str, list[Any]]:
    async def one(_: int, name: str) -> Any:
        if name == "session":
            return await session_cat(c, data, size)
        if name == "exec_floor":
            return await exec_floor(c)
        if name == "raw":
            return await raw_console(c, data, size)
        return await socat_relay(c.tmp, data, size)

    return await ainterleaved(reps, ["session", "exec_floor", "raw", "socat"], one)


async def echo(c: Chain, keys: int, reps: int) -> dict[str, list[float]]:
    async def one(_: int, name: str) -> list[float]:
        return await (session_echo(c, keys) if name == "session" else raw_echo(c, keys))

    runs = await ainterleaved(reps, ["session", "raw"], one)
    return {name: [x for rep in rs for x in rep] for name, rs in runs.items()}


def echo_summary(runs: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {name: percentiles(xs) for name, xs in runs.items()}
    out["session_vs_raw_p50"] = out["session"]["p50_ms"] / out["raw"]["p50_ms"]
    out["session_vs_raw_p99"] = out["session"]["p99_ms"] / out["raw"]["p99_ms"]
    return out


def summarise(runs: dict[str, list[Any]], size: int) -> dict[str, Any]:
    gib = size / (1 << 30)
    out: dict[str, Any] = {"exec_floor_s": statistics.median(runs["exec_floor"])}
    for name in ("session", "raw", "socat"):
        rs = runs[name]
        procs = rs[0]["cpu_s"].keys()
        cpu = {p: statistics.median(r["cpu_s"][p] for r in rs) / gib for p in procs}
        out[name] = {
            "MBps": statistics.median(r["MBps"] for r in rs),
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "cpu_s_per_gib": cpu,
            "cpu_s_per_gib_total": sum(v for p, v in cpu.items() if p != "client"),
        }
    net = out["session"]["wall_s"] - out["exec_floor_s"]
    out["session"]["MBps_without_exec_floor"] = size / max(net, 1e-9) / 1e6
    for other in ("raw", "socat"):
        o = out[other]
        out[f"session_vs_{other}"] = {
            "throughput": out["session"]["MBps"] / o["MBps"],
            "cpu_per_gib": out["session"]["cpu_s_per_gib_total"] / o["cpu_s_per_gib_total"],
        }
    return out


def plot(r: dict[str, Any], path: Path) -> None:
    plt = _plots.pyplot()
    t = r["throughput"]
    names = ["session", "raw", "socat"]
    fig, (a, b, e) = plt.subplots(1, 3, figsize=(15, 4.6))
    vr, vs = t.get("session_vs_raw", {}), t.get("session_vs_socat", {})
    _plots.bars(a, names, [t[n]["MBps"] for n in names])
    a.set_ylabel("MB/s (median)")
    a.set_title(
        f"cat of {r['mib']} MiB, guest -> reader\nsession/raw "
        f"{_plots.times(vr.get('throughput'))}, session/socat {_plots.times(vs.get('throughput'))}",
        fontsize=10,
    )
    _plots.bars(b, names, [t[n]["cpu_s_per_gib_total"] for n in names], fmt="{:.1f}")
    b.set_ylabel("CPU s per GiB (tether + relay + appliance)")
    b.set_title(
        f"CPU per GiB\nsession/raw {_plots.times(vr.get('cpu_per_gib'))}, "
        f"session/socat {_plots.times(vs.get('cpu_per_gib'))}",
        fontsize=10,
    )
    k = r["echo"]
    _plots.grouped(
        e,
        names[:2],
        {q: [k[n][f"{q}_ms"] for n in names[:2]] for q in ("p50", "p99")},
        fmt="{:.2f}",
        colours={"p50": _plots.OURS, "p99": _plots.OURS_ALT},
    )
    e.set_ylabel("keystroke echo, ms")
    e.set_title(
        f"keystroke echo\nsession/raw: p50 {_plots.times(k.get('session_vs_raw_p50'))}, "
        f"p99 {_plots.times(k.get('session_vs_raw_p99'))}",
        fontsize=10,
    )
    _plots.finish(fig, path, "sessions end to end (raw: the raw console path; no direct path)")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    watch = Watch()
    with tempfile.TemporaryDirectory(prefix="sessbench-") as d:
        tmp = Path(d)
        size = make_data(tmp / "data", args.mib)
        async with chain(tmp) as c:
            await exec_ready(c)
            runs = await throughput(c, tmp / "data", size, args.reps)
            keys = await echo(c, args.keys, args.reps)
        idle = await idle_sessions(tmp / "idle", args.sessions, args.probes)
    hs = idle.pop("handshake_s")
    idle["handshake"] = percentiles(hs)
    return stamp(
        {
            "bench": NAME,
            "mib": args.mib,
            "reps": args.reps,
            "smoke": args.smoke,
            "throughput": summarise(runs, size),
            "echo": echo_summary(keys),
            "idle": idle,
            "runs": {"throughput": runs, "echo_s": keys, "handshake_s": hs},
        },
        watch,
    )


def report(r: dict[str, Any]) -> None:
    t = r["throughput"]
    for n in ("session", "raw", "socat"):
        print(f"{n:8} {t[n]['MBps']:8.1f} MB/s  CPU/GiB {t[n]['cpu_s_per_gib']}")
    print(f"session vs raw {t['session_vs_raw']}, vs socat {t['session_vs_socat']}")
    k, i = r["echo"], r["idle"]
    for n in ("session", "raw"):
        print(f"echo {n:8} p50 {k[n]['p50_ms']:.2f} ms  p99 {k[n]['p99_ms']:.2f} ms")
    print(f"handshake p50 {i['handshake']['p50_ms']:.2f} ms  p99 {i['handshake']['p99_ms']:.2f} ms")
    print(f"idle sessions {i['sessions']}: {i['kib_per_session']:.1f} KiB each (vSPC RSS)")
    print(describe(r))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--keys", type=int, default=500, help="keystrokes a rep")
    p.add_argument("--sessions", type=int, default=1000, help="idle sessions")
    p.add_argument("--probes", type=int, default=200, help="handshakes timed")
    p.add_argument("--smoke", action="store_true", help="tiny run, for tests")
    args = p.parse_args()
    if args.smoke:
        args.mib, args.reps, args.keys, args.sessions, args.probes = 2, 1, 20, 20, 5
    r = trio.run(run, args)
    out = results_dir()
    (out / f"{NAME}.json").write_text(json.dumps(r, indent=2))
    plot(r, out / f"{NAME}.png")
    report(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
