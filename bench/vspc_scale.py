"""16,000 simulated VMs on one vSPC: RSS per connected VM and BEGIN->GOAHEAD latency.

The simulated ESX side runs in several worker processes (each holds at most a
few thousand connections; one process may have 20,000 open files here). Every
VM negotiates like ESX (vic.lab.esx_sim), then writes a console line now and
then. With all of them connected, the parent process runs a few hundred
vMotions of its own "probe" VMs (a whole migrate: BEGIN, new destination
connection, PEER, PEER-OK, COMPLETE) and records BEGIN->GOAHEAD as the source
ESX sees it (send of BEGIN to receipt of GOAHEAD: when the simulator's reader
task decodes it, as the direct mode's raw client does; ``waiter_p50/p99`` also
count the simulator waking its waiting task); the vSPC's own histogram is read
from its metrics endpoint too. The probes also read with kernel receive
timestamps (vic.lab.rxstamp): ``kernel_p50/p99`` time each BEGIN to the moment
its GOAHEAD reached the probing host's kernel, i.e. without the probing process's
own wake-up and event loop, which a real ESX host (another machine) would not
share with the vSPC. The CPU share the hypervisor stole from this VM while the
vMotions ran is recorded beside them (``cpu_steal_during_vmotions``).

Reported: vSPC RSS growth per connected VM (target <= 7 KiB) and
BEGIN->GOAHEAD p50/p99 (target p99 <= 2 ms). For comparison the same run does
the same with ``direct``: a minimal trio server (bench-internal) that holds
the same connections and answers a BEGIN frame with a GOAHEAD-shaped frame,
i.e. the floor for any trio implementation. (socat forks a process per
connection, so it has no meaningful per-connection figure at this scale.)
With ``--modes ...,vmware`` it also runs VMware's public asyncio vSPC (PyPI
vmware-vspc, installed by bench/fetch-peers; see bench/_vmware_vspc.py) with the
same ESX hosts and probes; not installed, that mode is skipped with a note.
The simulated ESX hosts stand for other machines: their worker processes run at
``--worker-nice`` (10) so that they yield the CPU to the server under test, the
vSPC and the direct server alike (0 shares the CPU equally).

    .venv/bin/python bench/vspc_scale.py [--vms 16000] [--workers 4] [--vmotions 300] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _plots
import _vspc_benchlib as bl
import trio
from _common import free_port
from _rounds import ainterleaved, median_run
from _scale_hosts import Workers, sink_server, worker
from _scale_metrics import histogram_quantiles, loop_figures
from _scale_probes import Probes
from _steal import Watch, cpu_ticks, stamp, steal_since
from _vmware_vspc import VmwareProbes, VmwareVspc, unavailable

NAME = "vspc_scale"
VSPC_MODES = ("vspc", "vspc_base")


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


class _Server:
    """The server under test: ``vic vspc``, the minimal trio server, or VMware's vSPC."""

    def __init__(self, mode: str, workdir: Path, args: argparse.Namespace) -> None:
        self.mode = mode
        self.workdir = workdir
        self.v: bl.Vspc | None = None
        if mode in VSPC_MODES:  # vspc_base: the vSPC of --base-root, for a same-run A/B
            root = args.base_root if mode == "vspc_base" else args.vspc_root
            self.cm: Any = bl.run_vspc(
                workdir, profile=args.profile_vspc, root=root, loopwatch=args.loopwatch
            )
            self.v = self.cm.__enter__()
            self.pid, self.port = self.v.pid, self.v.port
        elif mode == "vmware":  # bench/_vmware_vspc.py
            self.peer = VmwareVspc(workdir)
            self.pid, self.port = self.peer.pid, self.peer.port
        else:
            self.port = free_port()
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--sink", "--port", str(self.port)],
                stdout=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            bl.wait_for(lambda: bl.tcp_listening(self.port), "sink server", proc=self.proc)
            self.pid = self.proc.pid

    def stop(self, result: dict[str, Any]) -> None:
        if self.mode in VSPC_MODES:
            if self.v is not None and self.v.proc.poll() is not None:
                result["vspc_stderr_tail"] = bl.tail(self.workdir / "vspc.stderr")
            self.cm.__exit__(None, None, None)
            result["vspc_stderr_tail"] = bl.tail(self.workdir / "vspc.stderr", 1500)
        elif self.mode == "vmware":
            self.peer.stop(result)
        else:
            bl.stop(self.proc)


async def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """mode: "vspc" (the real vic vspc), "direct" (the minimal trio server) or "vmware"."""
    workdir = Path(tempfile.mkdtemp(prefix=f"vspc-scale-{mode}-"))
    result: dict[str, Any] = {"mode": mode}
    probes_n = min(args.probes, args.vms)
    counts = _split(args.vms - probes_n, args.workers)
    try:
        server = _Server(mode, workdir, args)  # harness set-up, before timing
        try:
            async with trio.open_nursery() as nursery:
                probes = (
                    VmwareProbes(server.port, nursery, args.vmotion_gap)
                    if mode == "vmware"
                    else Probes(mode, server.port, nursery, args.vmotion_gap)
                )
                await probes.open(probes_n)
                await probes.vmotions(min(2, args.vmotions), record=False)  # warm-up
                rss0 = bl.rss_kib(server.pid)
                result["rss_kib_before"] = rss0
                result["probes"] = probes_n
                workers = Workers(__file__)
                connected = await connect_all(
                    workers, nursery, server, counts, probes_n, args, result
                )
                await settle(server, args, result, rss0, connected)
                await measure_vmotions(probes, server, args, result)
                if isinstance(probes, VmwareProbes):
                    result["vmware_peer"] = probes.peer_notes()
                if server.v is not None:
                    await read_metrics(server.v, result)
                result["worker_final"] = await workers.stop()
                await probes.aclose()
                nursery.cancel_scope.cancel()
        finally:
            server.stop(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


async def connect_all(
    workers: Workers,
    nursery: trio.Nursery,
    server: _Server,
    counts: list[int],
    probes_n: int,
    args: argparse.Namespace,
    result: dict[str, Any],
) -> int:
    """Start the workers and wait until they have connected every VM."""
    t0 = time.monotonic()
    await workers.start(nursery, server.port, counts, args, raw=(server.mode == "direct"))
    ready = await workers.wait_ready(args.connect_timeout)
    result["connect_seconds"] = time.monotonic() - t0
    connected: int = sum(r.get("connected", 0) for r in ready)
    result["worker_ready"] = ready
    result["connected"] = connected + probes_n
    if server.v is not None:
        m0 = time.monotonic()
        result["connected_vms_metric"] = await trio.to_thread.run_sync(
            server.v.metric, "vspc_connected_vms"
        )
        # one /metrics scrape with all VMs connected: how long it takes
        result["metrics_scrape_seconds"] = time.monotonic() - m0
    return connected


async def settle(
    server: _Server, args: argparse.Namespace, result: dict[str, Any], rss0: int, connected: int
) -> None:
    """Let every VM write at least once (ring, log file), then take the RSS per VM."""
    pid = server.pid
    c0, w0 = bl.cpu_seconds(pid), time.monotonic()
    await trio.sleep(args.settle if args.settle is not None else args.interval * 1.5 + 1.0)
    result["middle_cpu_utilisation_steady"] = (bl.cpu_seconds(pid) - c0) / (time.monotonic() - w0)
    rss1 = bl.rss_kib(pid)
    result["rss_kib_after_connect"] = rss1
    result["open_fds"] = bl.open_fds(pid)
    result["rss_kib_per_vm"] = (rss1 - rss0) / max(1, connected)


async def measure_vmotions(
    probes: Probes, server: _Server, args: argparse.Namespace, result: dict[str, Any]
) -> None:
    """The timed vMotions, with the server's CPU and the hypervisor's steal meanwhile."""
    pid = server.pid
    if server.v is not None:  # the loop's longest step/batch gauges restart here
        await trio.to_thread.run_sync(server.v.metrics_text)
    c0, w0 = bl.cpu_seconds(pid), time.monotonic()
    steal0 = cpu_ticks()
    await probes.vmotions(args.vmotions, record=True)
    # the hypervisor's share of this VM's CPU time while measuring
    result["cpu_steal_during_vmotions"] = steal_since(steal0)
    result["middle_cpu_utilisation_during_vmotions"] = (bl.cpu_seconds(pid) - c0) / (
        time.monotonic() - w0
    )
    result["vmotion_failures"] = probes.failures
    result["rss_kib_after_vmotions"] = bl.rss_kib(pid)
    result["begin_goahead_ms"] = probes.begin_goahead_ms()


async def read_metrics(v: bl.Vspc, result: dict[str, Any]) -> None:
    """The vSPC's own view: connected VMs, its BEGIN->GOAHEAD histogram, vMotion outcomes."""
    try:
        text = await trio.to_thread.run_sync(v.metrics_text)
    except OSError as e:
        result["metrics_error"] = repr(e)
        return
    result["connected_vms_metric_after"] = v.metric("vspc_connected_vms", text)
    result["vspc_histogram"] = histogram_quantiles(
        text, "vspc_vmotion_begin_to_goahead_seconds", (0.5, 0.99)
    )
    result["event_loop"] = loop_figures(text)
    result["vmotions_by_outcome"] = {
        line.split('outcome="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vspc_vmotions_total{") and 'outcome="' in line
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    notes: list[str] = []
    modes = [m for m in ("vspc", "vspc_base", "direct", "vmware") if m in args.modes]
    if "vspc_base" in modes and args.base_root is None:
        modes.remove("vspc_base")
        notes.append("vspc_base skipped: no --base-root")
    if "vspc" in modes and (reason := bl.vspc_available()) is not None:
        modes.remove("vspc")
        notes.append(f"vspc skipped: {reason}")
    if "vmware" in modes and (reason := unavailable()) is not None:
        modes.remove("vmware")
        notes.append(f"vmware not measured: {reason}")

    async def one(rnd: int, mode: str) -> dict[str, Any]:
        print(f"--- round {rnd} {mode}: {args.vms} VMs in {args.workers} workers", flush=True)
        r = await run_mode(mode, args)
        print_run(mode, r)
        return r

    rounds = await ainterleaved(args.rounds, modes, one)  # vspc, direct, vspc, direct ...
    runs = {m: median_run(rs, lambda r: r["begin_goahead_ms"]["p99"]) for m, rs in rounds.items()}
    return {
        "bench": NAME,
        "vms": args.vms,
        "workers": args.workers,
        "worker_nice": args.worker_nice,
        "vmotions": args.vmotions,
        "interval": args.interval,
        "settle": args.settle,
        "vmotion_gap": args.vmotion_gap,
        "smoke": args.smoke,
        "target": {"rss_kib_per_vm_max": 7.0, "begin_goahead_p99_ms_max": 2.0},
        "runs": runs,  # per mode, its round with the median p99
        "rounds": {m: [_quantiles(r) for r in rs] for m, rs in rounds.items()},
        "summary": summarize(runs),
        "notes": notes,
        "host": bl.host_info(),
    }


def _quantiles(r: dict[str, Any]) -> dict[str, Any]:
    """One round's BEGIN->GOAHEAD quantiles and RSS per VM (no samples)."""
    lat = r["begin_goahead_ms"]
    keep = ("p50", "p99", "kernel_p50", "kernel_p99")
    return {"rss_kib_per_vm": r.get("rss_kib_per_vm"), **{k: lat.get(k) for k in keep}}


def print_run(mode: str, r: dict[str, Any]) -> None:
    lat = r["begin_goahead_ms"]
    print(
        f"{mode}: connected {r['connected']} in {r['connect_seconds']:.1f}s, "
        f"RSS {r['rss_kib_before']} -> {r['rss_kib_after_connect']} KiB "
        f"= {r['rss_kib_per_vm']:.2f} KiB/VM; BEGIN->GOAHEAD p50 {lat['p50']:.3f} ms "
        f"p99 {lat['p99']:.3f} ms (n={lat['n']}, failed {r.get('vmotion_failures')}; "
        f"at the kernel: p50 {lat['kernel_p50'] or 0:.3f} "
        f"p99 {lat['kernel_p99'] or 0:.3f} ms); "
        f"relay CPU {r['middle_cpu_utilisation_steady']:.0%} steady, "
        f"{r['middle_cpu_utilisation_during_vmotions']:.0%} during vMotions; "
        f"CPU stolen by the hypervisor meanwhile {r['cpu_steal_during_vmotions']:.0%}",
        flush=True,
    )
    loop = r.get("event_loop") or {}
    if loop:
        print(
            f"{mode} event loop while the vMotions ran: longest step "
            f"{loop['longest_step_ms']:.2f} ms, longest batch {loop['longest_batch_ms']:.2f} ms; "
            f"longest steps by task {loop['tasks_longest_step_ms']}",
            flush=True,
        )


def summarize(runs: dict[str, Any]) -> dict[str, Any]:
    """The vSPC's figures against the targets (and against the direct server's)."""
    if "vspc" not in runs:
        return {}
    r = runs["vspc"]
    summary = {
        "rss_kib_per_vm": r["rss_kib_per_vm"],
        "begin_goahead_p50_ms": r["begin_goahead_ms"]["p50"],
        "begin_goahead_p99_ms": r["begin_goahead_ms"]["p99"],
        "meets_rss_target": r["rss_kib_per_vm"] <= 7.0,
        "begin_goahead_p99_incl_failed_ms": r["begin_goahead_ms"]["p99_incl_failed"],
        "vmotion_failures": r["begin_goahead_ms"]["failed"],
        "meets_p99_target": r["begin_goahead_ms"]["p99_incl_failed"] <= 2.0,
        # timed to the answer's arrival in the probing host's kernel
        "begin_goahead_kernel_p50_ms": r["begin_goahead_ms"]["kernel_p50"],
        "begin_goahead_kernel_p99_ms": r["begin_goahead_ms"]["kernel_p99_incl_failed"],
        "meets_p99_target_kernel": (r["begin_goahead_ms"]["kernel_p99_incl_failed"] or 1e9) <= 2.0,
        "cpu_steal_during_vmotions": r["cpu_steal_during_vmotions"],
    }
    if "direct" in runs:
        d = runs["direct"]
        if d["rss_kib_per_vm"] > 0.5:  # meaningless with a handful of VMs (smoke)
            summary["rss_vs_direct"] = r["rss_kib_per_vm"] / d["rss_kib_per_vm"]
        summary["p99_vs_direct"] = r["begin_goahead_ms"]["p99"] / max(
            d["begin_goahead_ms"]["p99"], 1e-9
        )
        summary["direct_kernel_p99_ms"] = d["begin_goahead_ms"]["kernel_p99"]
    if "vspc_base" in runs:  # the same vSPC at another checkout (A/B)
        b = runs["vspc_base"]
        summary["base_rss_kib_per_vm"] = b["rss_kib_per_vm"]
        summary["base_kernel_p99_ms"] = b["begin_goahead_ms"]["kernel_p99"]
        summary["base_p50_ms"] = b["begin_goahead_ms"]["p50"]
    if "vmware" in runs:  # VMware's vSPC, the same ESX-like probes
        w = runs["vmware"]["begin_goahead_ms"]
        summary["p50_vs_vmware"] = r["begin_goahead_ms"]["p50"] / max(w["p50"], 1e-9)
        summary["p99_vs_vmware"] = r["begin_goahead_ms"]["p99"] / max(w["p99"], 1e-9)
        summary["vmware_rss_kib_per_vm"] = runs["vmware"]["rss_kib_per_vm"]
    return summary


def plot(data: dict[str, Any], path: Path) -> None:
    plt = _plots.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    modes = list(data["runs"])
    _plots.bars(a1, modes, [data["runs"][m]["rss_kib_per_vm"] for m in modes], fmt="{:.2f}")
    a1.axhline(7.0, color="r", ls="--", label="target 7 KiB")
    a1.set_ylim(0, max(a1.get_ylim()[1], 8.0))
    a1.set_ylabel("RSS growth per connected VM (KiB)")
    s = data.get("summary") or {}
    rss = f"\nvspc/direct {_plots.times(s.get('rss_vs_direct'))}" if "rss_vs_direct" in s else ""
    a1.set_title(f"{data['vms']} VMs connected{rss}", fontsize=10)
    a1.legend(fontsize=8, loc="upper left")
    for m in modes:
        xs = sorted(data["runs"][m]["begin_goahead_ms"]["all"])
        if xs:
            ys = [(k + 1) / len(xs) for k in range(len(xs))]
            a2.plot(xs, ys, label=m, color=_plots.colour(m))
    a2.axvline(2.0, color="r", ls="--", label="p99 target 2 ms")
    a2.axhline(0.99, color="grey", ls=":")
    a2.set_xscale("log")
    _plots.log_ticks(a2)
    a2.set_xlabel("BEGIN -> GOAHEAD as the source ESX sees it (ms, log scale)")
    a2.set_ylabel("CDF")
    p99 = (
        f"\np99 vspc/direct {_plots.times(s.get('p99_vs_direct'))}" if "p99_vs_direct" in s else ""
    )
    a2.set_title(f"{data['vmotions']} vMotions while all are connected{p99}", fontsize=10)
    a2.legend(fontsize=8)
    _plots.finish(fig, path, "vSPC at scale (no socat path: the direct server is a bare trio one)")


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=16000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument(
        "--worker-nice",
        type=int,
        default=10,
        help="niceness of the simulated ESX hosts' processes: they stand for other "
        "machines, so they yield the CPU to the server under test (vspc and the "
        "direct server alike); 0 = share it equally",
    )
    ap.add_argument("--vmotions", type=int, default=300)
    ap.add_argument("--probes", type=int, default=50, help="VMs the parent migrates")
    ap.add_argument(
        "--interval", type=float, default=10.0, help="seconds between console lines per VM"
    )
    ap.add_argument(
        "--settle", type=float, default=None, help="seconds after connecting before measuring"
    )
    ap.add_argument("--vmotion-gap", type=float, default=0.05, help="mean seconds between vMotions")
    ap.add_argument("--concurrency", type=int, default=32, help="handshakes in flight per worker")
    ap.add_argument("--connect-timeout", type=float, default=1800.0)
    ap.add_argument(
        "--modes",
        default="vspc,direct",
        help="vspc, direct, vmware (VMware's vSPC: bench/fetch-peers installs it)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="runs of each mode, interleaved")
    ap.add_argument("--smoke", action="store_true", help="50 VMs, 5 vMotions (< 20 s)")
    ap.add_argument(
        "--vspc-root", type=Path, default=None, help="run the vSPC of this checkout (A/B)"
    )
    ap.add_argument(
        "--base-root",
        type=Path,
        default=None,
        help="mode vspc_base runs the vSPC of this checkout (same-run A/B against vspc)",
    )
    ap.add_argument(
        "--loopwatch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the vSPC measures its event loop's steps (vspc.loopwatch)",
    )
    ap.add_argument("--profile-vspc", type=Path, default=None, help="cProfile output for the vSPC")
    ap.add_argument(
        "--name",
        default=NAME,
        help="results file name (bench/results/NAME.json/png), e.g. vspc_scale_idle_9000",
    )
    # internal roles
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    return ap, args


def main() -> int:
    ap, args = parse_args()
    if args.worker:
        trio.run(worker, args)
        return 0
    if args.sink:
        trio.run(sink_server, args)
        return 0
    if args.smoke:
        args.vms, args.workers, args.vmotions, args.probes, args.interval = 50, 2, 5, 5, 1.0
    args.modes = tuple(m for m in args.modes.split(",") if m)
    per_worker = (args.vms - min(args.probes, args.vms)) / args.workers
    if per_worker > 19000:
        ap.error("more than 19,000 connections per worker process: add --workers")
    watch = Watch()
    data = stamp(trio.run(bench, args), watch)
    out = bl.write_json(args.name, data)
    plot(data, bl.png_path(args.name))
    s = data["summary"]
    if s:
        print(
            f"vspc: {s['rss_kib_per_vm']:.2f} KiB/VM (target <= 12), BEGIN->GOAHEAD "
            f"p50 {s['begin_goahead_p50_ms']:.3f} ms p99 {s['begin_goahead_p99_ms']:.3f} ms; "
            f"at the probing host's kernel p50 {s['begin_goahead_kernel_p50_ms'] or 0:.3f} ms "
            f"p99 {s['begin_goahead_kernel_p99_ms'] or 0:.3f} ms (target p99 <= 2)"
        )
    for note in data["notes"]:
        print("note:", note)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
