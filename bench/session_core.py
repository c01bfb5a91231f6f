"""Issue 13's session cores, in one process: what the sealed transport and the
session layer cost before any adapter or wire is involved.

* handshake: CPU time of one Noise NNpsk0 handshake (both ends), p50/p99;
* sealed: bytes through two ``SecureChannel``s in 64 KiB records, against a plain
  copy of the same bytes (the floor), CPU s/GiB;
* session: a tether's stdout through ``Session`` -> records -> ``SecureChannel``
  -> ``SecureChannel`` -> ``Session`` (the appliance), CPU s/GiB;
* idle: memory per idle established session (both ends' objects), at 1,000.

The issue's end-to-end figures (exec through relay and mesh against the raw
console path and socat, keystroke echo) need the adapters and come with them.
Writes session_core.json and .png to bench/results (or $VIC_BENCH_RESULTS).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _plots  # noqa: E402
from _common import results_dir  # noqa: E402
from _rounds import interleaved  # noqa: E402
from _steal import Watch, describe, stamp  # noqa: E402

from common.proto.session.channels import ExecRequested, Role  # noqa: E402
from common.proto.session.messages import ExecSpec, Stream  # noqa: E402
from common.proto.session.secure import Established, Record, SecureChannel  # noqa: E402
from common.proto.session.secure import Role as SecureRole  # noqa: E402
from common.proto.session.session import Session, SessionConfig  # noqa: E402

SECRET = b"s" * 32
GIB = 1 << 30
CHUNK = 64 * 1024 - 512  # what one record carries with room for the session header


def cpu() -> float:
    return time.process_time()


def pair() -> tuple[SecureChannel, SecureChannel]:
    """Two channels, handshake done."""
    a = SecureChannel(SecureRole.INITIATOR, [SECRET])
    b = SecureChannel(SecureRole.RESPONDER, [SECRET])
    a.start()
    done = 0
    while done < 2:
        for src, dst in ((a, b), (b, a)):
            out = src.data_to_send()
            if out:
                done += sum(isinstance(e, Established) for e in dst.receive_data(out))
    return a, b


def handshakes(n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        t0 = cpu()
        pair()
        times.append((cpu() - t0) * 1e3)
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(0.99 * (len(times) - 1))]}


def sealed(total: int) -> dict[str, float]:
    a, b = pair()
    block = bytes(CHUNK)
    t0, w0 = cpu(), time.perf_counter()
    moved = 0
    while moved < total:
        a.send_record(block)
        for ev in b.receive_data(a.data_to_send()):
            assert isinstance(ev, Record)
            moved += len(ev.payload)
    return rate(moved, cpu() - t0, time.perf_counter() - w0)


def floor(total: int) -> dict[str, float]:
    """The same bytes copied once each way (what any user-space relay pays at least)."""
    block, moved = bytes(CHUNK), 0
    t0, w0 = cpu(), time.perf_counter()
    while moved < total:
        moved += len(bytearray(block))
    return rate(moved, cpu() - t0, time.perf_counter() - w0)


def rate(moved: int, cpu_s: float, wall_s: float) -> dict[str, float]:
    return {"cpu_s_per_gib": cpu_s / moved * GIB, "mb_s": moved / max(wall_s, 1e-9) / 1e6}


def live_pair() -> tuple[Session, Session, SecureChannel, SecureChannel, int]:
    """Appliance and tether sessions over an established sealed pair, one exec open."""
    cfg = SessionConfig(replay_limit=4 * 1024 * 1024)
    app, tet = Session(Role.APPLIANCE, os.urandom(16), cfg), Session(Role.TETHER, None, cfg)
    sa, st = pair()
    app.connection_up(0.0)
    tet.connection_up(0.0)
    ch = app.open_exec(ExecSpec(argv=("cat",)))
    for _ in range(8):  # RESUME both ways, then OPEN_EXEC, then OPENED
        for ev in shuttle(app, tet, sa, st):
            if isinstance(ev, ExecRequested):
                tet.accept(ev.ch)
    return app, tet, sa, st, ch


def shuttle(app: Session, tet: Session, sa: SecureChannel, st: SecureChannel) -> list[Any]:
    """Move every pending record both ways once; the tether's events."""
    events: list[Any] = []
    for src, s_out, s_in, dst, sink in ((app, sa, st, tet, events), (tet, st, sa, app, None)):
        for rec in src.records_to_send(max_records=64):
            s_out.send_record(rec)
        for ev in s_in.receive_data(s_out.data_to_send()):
            if isinstance(ev, Record):
                got = dst.receive_record(ev.payload, 0.0)
                if sink is not None:
                    sink.extend(got)
    return events


def session(total: int) -> dict[str, float]:
    app, tet, sa, st, ch = live_pair()
    block = bytes(CHUNK)
    sent = 0
    t0, w0 = cpu(), time.perf_counter()
    while sent < total:
        sent += tet.send(ch, Stream.STDOUT, block)
        shuttle(app, tet, sa, st)
    return rate(sent, cpu() - t0, time.perf_counter() - w0)


def idle_memory(n: int) -> dict[str, float]:
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    keep = [live_pair() for _ in range(n)]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert len(keep) == n
    return {"sessions": n, "bytes_per_session": grown / n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="MiB per throughput run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes")
    args = ap.parse_args()
    if args.smoke:
        args.mib, args.reps, args.sessions = 4, 1, 20
    total = args.mib << 20
    watch = Watch()
    paths = {"floor": floor, "sealed": sealed, "session": session}
    runs = interleaved(args.reps, list(paths), lambda _, name: paths[name](total))
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    result = {
        "bench": "session_core",
        "smoke": args.smoke,
        "mib": args.mib,
        "reps": args.reps,
        "runs": runs,
        "median": med,
        "handshake": handshakes(20 if args.smoke else 500),
        "idle": idle_memory(args.sessions),
    }
    stamp(result, watch)
    out = results_dir()
    name = "session_core" + ("-smoke" if args.smoke else "")
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(med, out / f"{name}.png")
    report(result)
    return 0


def plot(med: dict[str, dict[str, float]], path: Path) -> None:
    plt = _plots.pyplot()
    names = list(med)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    _plots.bars(ax, names, [med[n]["cpu_s_per_gib"] for n in names], fmt="{:.2f}")
    ax.set_ylabel("CPU s per GiB (lower is better)")
    ratio = ""
    if "session" in med and "sealed" in med and med["sealed"]["cpu_s_per_gib"]:
        r = med["session"]["cpu_s_per_gib"] / med["sealed"]["cpu_s_per_gib"]
        ratio = f"\nsession/sealed {r:.2f}x"
    ax.set_title(f"session cores in one process (median; no socat here){ratio}", fontsize=10)
    _plots.finish(fig, path)


def report(r: dict[str, Any]) -> None:
    for k, v in r["median"].items():
        print(f"{k:8s} {v['mb_s']:9.1f} MB/s  {v['cpu_s_per_gib']:6.2f} CPU s/GiB")
    h, i = r["handshake"], r["idle"]
    print(f"handshake (both ends): p50 {h['p50_ms']:.2f} ms  p99 {h['p99_ms']:.2f} ms CPU")
    print(f"idle: {i['bytes_per_session'] / 1024:.1f} KiB per session at {i['sessions']}")
    print(describe(r))


if __name__ == "__main__":
    sys.exit(main())
