"""64-byte ping-pong through one relay hop: added latency of the pump vs socat.

    client (this process) -> relay -> echo server (own process) -> relay -> client

Contenders, each in its own process: our pump (bench/_pump_server.py; also
forced onto its copy path, for information), socat
(``-b 262144``, ``nodelay`` on its TCP sockets) and a direct connection. Each
repetition connects through every contender at once and interleaves blocks of
50 round trips (each contender in turn), so load on this shared machine hits
all alike; the *added* latency of a relay is its p50 (p99) minus the direct p50
(p99) of the same repetition.

Target (issue 3): pump added p50 <= 1.2x socat added p50.
Writes relay_latency.json and .png under bench/results (or $VIC_BENCH_RESULTS).
``--smoke``: 300 round trips, two repetitions.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _plots
from _common import results_dir, verdict
from _relay_benchlib import (
    Relay,
    connect,
    environment,
    listen_socket,
    median,
    percentile,
    relay_listen_addr,
    start_pump,
    start_socat,
    write_json,
)
from _steal import Watch, describe, stamp

MSG = 64
BLOCK = 50
CONTENDERS = ("direct", "socat", "pump", "pump-copy")


def serve_echo(kind: str, tmpdir: str) -> None:
    """Echo server process: prints READY <addr>, echoes each connection in a thread."""
    sock, addr = listen_socket(kind, Path(tmpdir), "echo.sock")
    print(f"READY {addr}", flush=True)

    def echo(conn: socket.socket) -> None:
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)

    while True:
        conn, _ = sock.accept()
        if kind == "tcp":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def start_echo(kind: str, tmpdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-echo", kind, "--tmpdir", str(tmpdir)],
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("READY "):
        raise RuntimeError(f"echo server said {line!r}")
    return proc, line.split()[1]


def ping_pong(socks: dict[str, socket.socket], n: int, warmup: int) -> dict[str, list[float]]:
    """Round-trip times in microseconds (sorted) per contender, interleaved.

    Blocks of BLOCK round trips go through each contender in turn (rotating the
    order), so a burst of load on this shared machine hits all of them alike
    while each path stays warm within its block.
    """
    msg = bytes(range(MSG))
    buf = bytearray(MSG)
    view = memoryview(buf)
    names = list(socks)
    out: dict[str, list[float]] = {c: [] for c in names}
    for block, start in enumerate(range(0, warmup + n, BLOCK)):
        k = block % len(names)
        for c in names[k:] + names[:k]:
            s = socks[c]
            for i in range(start, min(start + BLOCK, warmup + n)):
                t0 = time.perf_counter_ns()
                s.sendall(msg)
                got = 0
                while got < MSG:
                    r = s.recv_into(view[got:])
                    if not r:
                        raise RuntimeError(f"{c}: echo closed")
                    got += r
                t1 = time.perf_counter_ns()
                if buf != msg:
                    raise RuntimeError(f"{c}: echo corrupted the message")
                if i >= warmup:
                    out[c].append((t1 - t0) / 1000)
    for v in out.values():
        v.sort()
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    plt = _plots.pyplot()
    kinds = list(summary)
    fig, axes = plt.subplots(2, len(kinds), figsize=(5.5 * len(kinds), 7), squeeze=False)
    for col, kind in enumerate(kinds):
        s = summary[kind]
        r = s["ratios"]
        for row, (q, ratio) in enumerate((("p50", "added_p50"), ("p99", "added_p99"))):
            ax = axes[row][col]
            _plots.bars(ax, CONTENDERS, [s[c][f"{q}_us"] for c in CONTENDERS])
            ax.set_ylabel(f"round trip {q} (us, median of reps)")
            ax.set_title(
                f"{kind} {q}: added by pump {s['pump'][f'{ratio}_us']:.0f} us, "
                f"socat {s['socat'][f'{ratio}_us']:.0f} us\n"
                f"pump/socat added {q}: {_plots.times(r.get(f'pump_vs_socat_{ratio}'))}",
                fontsize=10,
            )
    _plots.finish(fig, path, "64-byte ping-pong through one relay hop (added = minus direct)")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=5000, help="round trips per measurement")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--kinds", default="tcp,unix")
    p.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    p.add_argument("--serve-echo", help=argparse.SUPPRESS)
    p.add_argument("--tmpdir", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if args.serve_echo:
        serve_echo(args.serve_echo, args.tmpdir)
        return 0
    if args.smoke:
        args.count, args.warmup, args.reps = 300, 50, 2
    kinds = args.kinds.split(",")
    watch = Watch()
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        k: {c: [] for c in CONTENDERS} for k in kinds
    }
    with tempfile.TemporaryDirectory(prefix="vic-bench-") as tmp:
        for kind in kinds:
            measure_kind(kind, Path(tmp), args, runs[kind])
    summary = {kind: summarize(runs[kind]) for kind in kinds}
    print_summary(summary, args)
    data = {
        "bench": "relay_latency",
        "message_bytes": MSG,
        "count": args.count,
        "reps": args.reps,
        "smoke": args.smoke,
        "environment": environment(),
        "summary": summary,
        "runs": runs,
    }
    path = write_json("relay_latency", stamp(data, watch))
    print(describe(data))
    plot(summary, results_dir() / "relay_latency.png")
    print(f"wrote {path} and relay_latency.png")
    return 0


def measure_kind(
    kind: str, tmp: Path, args: argparse.Namespace, runs: dict[str, list[dict[str, float]]]
) -> None:
    """Every repetition over one socket kind, against one echo server process."""
    echo, echo_addr = start_echo(kind, tmp)
    try:
        for rep in range(args.reps):
            rtts = one_rep(kind, tmp, echo_addr, args)
            for c in CONTENDERS:
                r = {
                    "p50_us": percentile(rtts[c], 0.50),
                    "p99_us": percentile(rtts[c], 0.99),
                    "mean_us": sum(rtts[c]) / len(rtts[c]),
                }
                runs[c].append(r)
                print(
                    f"rep {rep} {kind:4} {c:9} p50 {r['p50_us']:8.1f} us"
                    f"  p99 {r['p99_us']:8.1f} us",
                    flush=True,
                )
    finally:
        echo.kill()
        echo.wait()


def one_rep(
    kind: str, tmp: Path, echo_addr: str, args: argparse.Namespace
) -> dict[str, list[float]]:
    """One repetition: a connection through every contender at once, ping-pong interleaved."""
    relays: list[Relay] = []
    socks: dict[str, socket.socket] = {}
    try:
        for c in CONTENDERS:
            if c == "direct":
                addr = echo_addr
            else:
                listen = relay_listen_addr(kind, tmp, f"relay-{c}.sock")
                relay = (
                    start_socat(listen, echo_addr, nodelay=True)
                    if c == "socat"
                    else start_pump(listen, echo_addr, copy=c == "pump-copy")
                )
                relays.append(relay)
                addr = relay.listen
            socks[c] = connect(addr)
        rtts = ping_pong(socks, args.count, args.warmup)
        for sock in socks.values():
            sock.close()
        for relay in relays:
            relay.finish()
    finally:
        for sock in socks.values():
            sock.close()
        for relay in relays:
            relay.kill()
    return rtts


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians over the repetitions of one kind, the added latencies, the ratios."""
    s: dict[str, Any] = {}
    direct = runs["direct"]
    for c in CONTENDERS:
        rs = runs[c]
        s[c] = {
            "p50_us": median([r["p50_us"] for r in rs]),
            "p99_us": median([r["p99_us"] for r in rs]),
            "added_p50_us": median([r["p50_us"] - d["p50_us"] for r, d in zip(rs, direct)]),
            "added_p99_us": median([r["p99_us"] - d["p99_us"] for r, d in zip(rs, direct)]),
        }
    socat_added = s["socat"]["added_p50_us"]
    s["ratios"] = {
        "pump_vs_socat_added_p50": s["pump"]["added_p50_us"] / socat_added
        if socat_added > 0
        else float("nan"),
        "pump_vs_socat_added_p99": s["pump"]["added_p99_us"] / s["socat"]["added_p99_us"]
        if s["socat"]["added_p99_us"] > 0
        else float("nan"),
        "pump_vs_socat_p50": s["pump"]["p50_us"] / s["socat"]["p50_us"],
        "pump_copy_vs_socat_added_p50": s["pump-copy"]["added_p50_us"] / socat_added
        if socat_added > 0
        else float("nan"),
    }
    s["targets"] = {"added_p50_ratio<=1.2": s["ratios"]["pump_vs_socat_added_p50"] <= 1.2}
    return s


def print_summary(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(f"medians over {args.reps} repetitions of {args.count} round trips of {MSG} bytes")
    for kind, s in summary.items():
        print(f"[{kind}]")
        for c in CONTENDERS:
            print(
                f"  {c:6} p50 {s[c]['p50_us']:8.1f} us  p99 {s[c]['p99_us']:8.1f} us"
                f"   added p50 {s[c]['added_p50_us']:7.1f} us"
                f"  added p99 {s[c]['added_p99_us']:7.1f} us"
            )
        for name, v in s["ratios"].items():
            print(f"  {name:28} {v:5.2f}")
        for name, ok in s["targets"].items():
            print(f"  target {name:25} {verdict(ok, args.smoke)}")


if __name__ == "__main__":
    raise SystemExit(main())
