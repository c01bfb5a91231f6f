"""Every bench in one go, then which of issue 16's goals are met (bench/run-all).

    bench/run-all                 # every bench, ~15 minutes on this 2-core machine
    bench/run-all --smoke         # every bench's --smoke run (what the test suite does)
    bench/run-all --only relay_throughput --only mesh_two_hop
    bench/run-all --report        # no bench: the goal table from the results there
    bench/run-all --check         # exit 1 if a bench failed or a goal is missed

The benches run one after the other, each in its own process, writing JSON and PNG
into bench/results/ (or ``--results`` / ``$VIC_BENCH_RESULTS``). Their sizes here are
smaller than each script's defaults so that all of them fit in about 15 minutes
(``PLAN`` says what each runs); every one still interleaves its contenders over
several rounds and records the load and the CPU stolen by the hypervisor.

Then two tables: each bench's wall time and exit status, and issue 16's goals
(bench/_goals.py): measure, now, goal, met. The exit status is 0 whatever they say,
unless ``--check``: then 1 if a bench failed, or (in a full run) a goal is missed or
not measured.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import _goals
from _common import results_dir

BENCH = Path(__file__).resolve().parent


IDLE_9000_ARGS = (
    *("--vms", "9000", "--interval", "600", "--settle", "10", "--vmotions", "200"),
    *("--modes", "vspc,direct,vmware", "--name", _goals.IDLE_9000),
)


@dataclass(frozen=True)
class Step:
    name: str  # what --only names; also the results file's stem
    script: str  # bench/<script>.py
    args: tuple[str, ...] = ()  # a full run's arguments (a smoke run passes --smoke only)
    minutes: float = 1.0  # about how long the full run takes here


PLAN: tuple[Step, ...] = (  # minutes: as measured here with the load at 6 to 9
    Step("vspc_throughput", "vspc_throughput", ("--mib", "32", "--reps", "5"), 0.3),
    # 16,000 VMs with console traffic: the vSPC and the bare trio server, one round each
    Step("vspc_scale", "vspc_scale", ("--vmotions", "300"), 4.7),
    # 9,000 idle VMs: the vSPC, the bare server, and VMware's vSPC where the bench runs it
    Step(_goals.IDLE_9000, "vspc_scale", IDLE_9000_ARGS, 1.8),
    Step("relay_throughput", "relay_throughput", ("--size", str(256 << 20), "--reps", "9"), 1.3),
    Step("relay_latency", "relay_latency", ("--count", "5000", "--reps", "5"), 0.5),
    Step("relay_idle", "relay_idle", ("--streams", "9000", "--reps", "3"), 1.3),
    Step(
        "mesh_two_hop",
        "mesh_two_hop",
        ("--size-mb", "256", "--reps", "5", "--measure", "5", "--kill-mb", "1024"),
        2.2,
    ),
    Step("agent_console", "agent_console", ("--reps", "5"), 0.4),
    Step("agent_exit_latency", "agent_exit_latency", ("--reps", "3"), 0.5),
    Step("session_core", "session_core", ("--mib", "64", "--reps", "5"), 0.2),
    Step("session_exec", "session_exec", ("--mib", "64", "--reps", "3"), 0.7),
    Step(
        "docker_endpoint",
        "docker_endpoint",
        ("--history-mib", "256", "--mib", "64", "--rounds", "5", "--concurrent", "100"),
        0.5,
    ),
)


def command(step: Step, smoke: bool) -> list[str]:
    extra = ["--smoke"] if smoke else list(step.args)
    if smoke and "--name" in step.args:  # keep the result's own name
        i = step.args.index("--name")
        extra += list(step.args[i : i + 2])
    return [sys.executable, str(BENCH / f"{step.script}.py"), *extra]


def run(step: Step, smoke: bool, results: Path, timeout: float) -> tuple[float, int]:
    """One bench, its output passed through: (wall seconds, exit status; -9 on timeout)."""
    env = dict(os.environ, VIC_BENCH_RESULTS=str(results), MPLBACKEND="Agg")
    print(f"=== {step.name}: {' '.join(command(step, smoke)[1:])}", flush=True)
    t0 = time.monotonic()
    try:
        rc = subprocess.run(command(step, smoke), env=env, timeout=timeout, check=False).returncode
    except subprocess.TimeoutExpired:
        rc = -9
    return time.monotonic() - t0, rc


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="each bench's tiny --smoke run")
    ap.add_argument("--only", action="append", choices=[s.name for s in PLAN], default=None)
    ap.add_argument("--report", action="store_true", help="run nothing: the goals only")
    ap.add_argument("--check", action="store_true", help="exit 1 on a failure or missed goal")
    ap.add_argument("--results", type=Path, default=None, help="default bench/results")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per bench")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.results is not None:
        os.environ["VIC_BENCH_RESULTS"] = str(args.results)
    results = results_dir()
    steps = [s for s in PLAN if args.only is None or s.name in args.only]
    ran: list[tuple[Step, float, int]] = []
    if not args.report:
        for step in steps:
            ran.append((step, *run(step, args.smoke, results, args.timeout)))
    failed = [s.name for s, _, rc in ran if rc != 0]
    if ran:
        print("\n| bench | seconds | planned | exit |\n|---|---|---|---|")
        for s, secs, rc in ran:
            print(f"| {s.name} | {secs:.0f} | {60 * s.minutes:.0f} | {rc} |")
        total, planned = sum(x for _, x, _ in ran), 60 * sum(s.minutes for s in steps)
        print(f"| all | {total:.0f} | {planned:.0f} | |")
    lines, met = _goals.table(results)
    print(f"\nissue 16's goals, from {results}:\n" + "\n".join(lines))
    if failed:
        print(f"failed: {', '.join(failed)}")
    missed = not met and not args.smoke
    return 1 if args.check and (failed or missed) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
