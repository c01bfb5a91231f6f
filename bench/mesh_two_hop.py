"""Two-hop mesh benchmark: ingress relay -> peer link -> egress relay -> sink.

Scenarios, each in the same run as its comparison:

1. **bulk**: one stream of ``--size-mb`` MiB client -> sink through
   * ours, mTLS peer link (TLS 1.3, our CA) and ours, plaintext link;
   * socat's two-hop chain ``-b 262144``: plain TCP, and OPENSSL between the hops;
   * a direct connection (client -> sink).
   Ratios: ours-TLS / socat-TLS and ours-plain / socat-plain (targets 0.8 and 1.0);
   also ours-TLS / socat-plain for the strict reading. Relay CPU seconds per GiB.
2. **streams**: ``--streams`` (1,000) concurrent streams over one TLS link, each
   sending flat out; after ``--warm`` seconds the sink counts every stream's bytes
   for ``--measure`` seconds: aggregate throughput, and fairness = slowest /
   fastest stream in that window (target >= 0.5). Direct connections for reference.
3. **kill**: bulk over TLS while the ingress kills its link every ``--kill-every``
   seconds: bytes at the sink hash-equal to bytes sent (zero loss), throughput
   against the undisturbed TLS run (target >= 50%).

Relays run as separate processes (``--role ingress|egress``); client and sink run
here. Writes JSON + PNG to bench/results (or $VIC_BENCH_RESULTS). ``--smoke``:
tiny sizes, one repetition, < 20 s.

Quick A/B of the link code: ``--only bulk --contenders ours_tls,socat_tls,base_tls
--ab-tree DIR`` runs the relays of another checkout (DIR, e.g. ``git archive`` of
the commit before a change) as ``base_*``, interleaved with ours and socat in
every repetition; the ratios then include ours / base.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import _plots  # noqa: E402
from _common import raise_nofile, results_dir  # noqa: E402
from _mesh_harness import (  # noqa: E402
    BLOCK,
    Proc,
    Sink,
    make_certs,
    run_bulk,
    run_streams,
    start_ours,
    start_socat,
)
from _rounds import interleaved  # noqa: E402
from _steal import Watch, stamp  # noqa: E402

# =====================================================================  main
ALL = {"bulk", "streams", "kill"}


def bench(args: argparse.Namespace) -> int:
    raise_nofile()
    smoke = args.smoke
    size = (8 if smoke else args.size_mb) * BLOCK
    reps = 1 if smoke else args.reps
    n_streams = 20 if smoke else args.streams
    kill_size = (16 if smoke else args.kill_mb) * BLOCK
    base = os.urandom(BLOCK)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"mesh-bench-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    certs = tmp / "certs"
    make_certs(certs)
    socat = shutil.which("socat") is not None and not args.no_socat
    sink = Sink()
    hsink = Sink(hashing=True)
    watch = Watch()
    results: dict[str, Any] = {
        "bench": "mesh_two_hop",
        "smoke": smoke,
        "size_bytes": size,
        "reps": reps,
        "host": platform.node(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "runs": {},
    }
    only = set(args.only or ["bulk", "streams", "kill"])
    try:
        bulk = Bulk(sink, certs, size, base, socat, args.ab_tree, args.contenders)
        bulk.run(results, reps if "bulk" in only else 0)
        if "streams" in only:
            warm, measure = (0.5, 1.5) if smoke else (args.warm, args.measure)
            results["streams"] = streams(certs, n_streams, warm, measure)
            print(f"streams: {json.dumps(results['streams'])}", flush=True)
        if "kill" in only:
            kill_every = 0.02 if smoke else args.kill_every  # smoke: tiny transfer, kill often
            results["kill"] = kills(hsink, certs, kill_size, base, kill_every)
    finally:
        sink.close()
        hsink.close()
        shutil.rmtree(tmp, ignore_errors=True)
    stamp(results, watch)  # the machine is shared: read ratios with its load and steal
    return write_and_report(results, smoke, only)


class Bulk:
    """Scenario 1: one bulk stream through each contender, ``reps`` times in turn."""

    def __init__(
        self,
        sink: Sink,
        certs: Path,
        size: int,
        base: bytes,
        socat: bool,
        ab_tree: str | None = None,
        contenders: str | None = None,
    ) -> None:
        self.sink, self.size, self.base, self.socat = sink, size, base, socat
        self.configs: list[tuple[str, Any]] = [  # (name, start function)
            ("direct", None),
            ("ours_tls", lambda: start_ours(sink.port, certs)),
            ("ours_plain", lambda: start_ours(sink.port, None)),
        ]
        if socat:
            self.configs += [
                ("socat_tls", lambda: start_socat(sink.port, certs)),
                ("socat_plain", lambda: start_socat(sink.port, None)),
            ]
        if ab_tree:  # the same relays from another checkout: a same-run A/B of the link code
            script = Path(ab_tree).resolve() / "bench" / "mesh_two_hop.py"
            self.configs += [
                ("base_tls", lambda: start_ours(sink.port, certs, script=script)),
                ("base_plain", lambda: start_ours(sink.port, None, script=script)),
            ]
        if contenders:
            keep = set(contenders.split(","))
            self.configs = [c for c in self.configs if c[0] in keep]

    def run(self, results: dict[str, Any], reps: int) -> None:
        starts = dict(self.configs)

        def one(rep: int, name: str) -> dict[str, Any]:
            r = self.one(starts[name]() if starts[name] else [])
            cpu = r["cpu_s_per_gib"] if procs_cpu(name) else None
            print(
                f"bulk rep {rep} {name:12} {r['mb_s']:8.1f} MB/s"
                + (f" {cpu:5.2f} CPU-s/GiB" if cpu else "")
                + f" load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            return r

        runs = interleaved(reps, list(starts), one, rotate=True)  # none always first
        med = {k: statistics.median(x["mb_s"] for x in v) for k, v in runs.items() if v}
        cpu = {
            k: statistics.median(x["cpu_s_per_gib"] or 0 for x in v)
            for k, v in runs.items()
            if v and not k.startswith("socat")
        }
        results["runs"]["bulk"] = runs
        results["bulk_median_mb_s"] = med
        results["bulk_cpu_s_per_gib"] = cpu  # socat forks per connection: not measured
        pairs = {
            "tls_ours_over_socat_tls": ("ours_tls", "socat_tls"),
            "tls_ours_over_socat_plain": ("ours_tls", "socat_plain"),
            "plain_ours_over_socat_plain": ("ours_plain", "socat_plain"),
            "tls_ours_over_base": ("ours_tls", "base_tls"),
            "plain_ours_over_base": ("ours_plain", "base_plain"),
            "tls_base_over_socat_tls": ("base_tls", "socat_tls"),
            "plain_base_over_socat_plain": ("base_plain", "socat_plain"),
        }
        if reps:
            results["ratios"] = {
                k: med[a] / med[b] for k, (a, b) in pairs.items() if a in med and b in med
            }
            results["paired_ratios"] = paired(runs, pairs)

    def one(self, procs: list[Proc]) -> dict[str, Any]:
        try:
            port = procs[0].port if procs else self.sink.port
            assert port is not None
            return run_bulk(port, self.sink, self.size, self.base, procs)
        finally:
            for p in procs:
                p.kill()


def paired(
    runs: dict[str, list[dict[str, Any]]], pairs: dict[str, tuple[str, str]]
) -> dict[str, float]:
    """The median of each round's ratio (a and b ran in the same round, interleaved), which
    cancels the drift between rounds that a ratio of two medians keeps."""
    out = {}
    for k, (a, b) in pairs.items():
        if runs.get(a) and runs.get(b):
            out[k] = statistics.median(
                x["mb_s"] / y["mb_s"] for x, y in zip(runs[a], runs[b], strict=True)
            )
    return out


def procs_cpu(name: str) -> bool:
    """Whether the relay CPU of contender ``name`` is measured (socat forks per connection)."""
    return name != "direct" and not name.startswith("socat")


def streams(certs: Path, n_streams: int, warm: float, measure: float) -> dict[str, Any]:
    """Scenario 2: many streams over one TLS link, then the same directly."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4096)
    lport = lsock.getsockname()[1]
    procs = start_ours(lport, certs)
    try:
        assert procs[0].port is not None
        out = run_streams(procs[0].port, lsock, n_streams, warm, measure)
    finally:
        for p in procs:
            p.kill()
    direct = run_streams(lport, lsock, n_streams, warm, measure)
    lsock.close()
    out["direct_aggregate_mb_s"] = direct["aggregate_mb_s"]
    out["direct_fairness"] = direct["fairness_slowest_over_fastest"]
    return out


def kills(
    hsink: Sink, certs: Path, kill_size: int, base: bytes, kill_every: float
) -> dict[str, Any]:
    """Scenario 3: the link killed every ``kill_every`` s vs undisturbed, hashed end to end."""
    kill: dict[str, Any] = {}
    for label, every in (("undisturbed", 0.0), ("killed", kill_every)):
        procs = start_ours(hsink.port, certs, kill_every=every)
        try:
            assert procs[0].port is not None
            kill[label] = run_bulk(procs[0].port, hsink, kill_size, base, procs, varied=True)
        finally:
            for p in procs:
                p.kill()
        kill[label]["link_kills"] = procs[0].output.count("KILLED")
        print(f"kill {label}: {kill[label]}", flush=True)
    kill["throughput_ratio"] = kill["killed"]["mb_s"] / kill["undisturbed"]["mb_s"]
    return kill


def write_and_report(results: dict[str, Any], smoke: bool, only: set[str]) -> int:
    name = "mesh_two_hop-smoke" if smoke else "mesh_two_hop"
    if only != ALL:
        name += "-" + "-".join(sorted(only))
    out = results_dir() / name
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    if only == ALL:
        plot(results, out.with_suffix(".png"))
    print(
        json.dumps(
            {k: results.get(k) for k in ("bulk_median_mb_s", "ratios", "bulk_cpu_s_per_gib")},
            indent=2,
        )
    )
    if "streams" in results:
        print(
            f"streams fairness {results['streams']['fairness_slowest_over_fastest']:.2f}, "
            f"aggregate {results['streams']['aggregate_mb_s']:.1f} MB/s"
        )
    if "kill" in results:
        print(
            f"kill: intact={results['kill']['killed'].get('intact')} "
            f"ratio={results['kill']['throughput_ratio']:.2f}"
        )
    print(f"wrote {out.with_suffix('.json')}")
    ok = results.get("kill", {}).get("killed", {}).get("intact", True) and results.get(
        "streams", {}
    ).get("all_moving", True)
    return 0 if ok else 1


def plot(results: dict[str, Any], path: Path) -> None:
    plt = _plots.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    med = results["bulk_median_mb_s"]
    names = list(med)
    _plots.bars(axes[0], names, [med[n] for n in names])
    axes[0].set_ylabel("MB/s (median)")
    r = results["ratios"]
    axes[0].set_title(
        f"two hops, {results['size_bytes'] >> 20} MiB bulk\nours/socat: TLS "
        f"{_plots.times(r.get('tls_ours_over_socat_tls'))}, plain "
        f"{_plots.times(r.get('plain_ours_over_socat_plain'))}",
        fontsize=10,
    )
    s = results["streams"]
    _plots.bars(
        axes[1],
        ["ours (aggregate)", "direct"],
        [s["aggregate_mb_s"], s["direct_aggregate_mb_s"]],
    )
    axes[1].set_title(
        f"{s['streams']} streams on one TLS link\n"
        f"fairness slowest/fastest = {s['fairness_slowest_over_fastest']:.2f}",
        fontsize=10,
    )
    axes[1].set_ylabel("MB/s")
    k = results["kill"]
    _plots.bars(
        axes[2],
        ["ours undisturbed", "ours, link killed every s"],
        [k["undisturbed"]["mb_s"], k["killed"]["mb_s"]],
        colours=[_plots.OURS, _plots.OURS_ALT],
    )
    axes[2].set_title(
        f"link killed {k['killed']['link_kills']}x: intact={k['killed'].get('intact')}\n"
        f"killed/undisturbed = {_plots.times(k['throughput_ratio'])}",
        fontsize=10,
    )
    axes[2].set_ylabel("MB/s")
    _plots.finish(fig, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    p.add_argument("--size-mb", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--warm", type=float, default=3.0, help="streams: seconds before measuring")
    p.add_argument("--measure", type=float, default=10.0, help="streams: measuring window")
    p.add_argument("--kill-mb", type=int, default=2048)
    p.add_argument("--kill-every", type=float, default=1.0)
    p.add_argument("--no-socat", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--contenders",
        help="bulk: only these, comma-separated (direct, ours_tls, ours_plain, socat_tls, "
        "socat_plain, base_tls, base_plain)",
    )
    p.add_argument(
        "--ab-tree",
        help="bulk: also run the relays of this checkout as base_tls and base_plain (A/B)",
    )
    p.add_argument(
        "--only",
        choices=["bulk", "streams", "kill"],
        action="append",
        help="run only these scenarios (repeatable; default all)",
    )
    # internal: relay roles
    p.add_argument("--role", choices=["ingress", "egress"], help=argparse.SUPPRESS)
    p.add_argument("--sink", help=argparse.SUPPRESS)
    p.add_argument("--link-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--certs", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role:
        from _mesh_relays import role_main

        role_main(args)
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
