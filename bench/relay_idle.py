"""Idle relayed streams: memory per stream in one relay process.

N client connections (this process) -> one `vic relay` process -> a sink process
that accepts and holds every stream. Each stream carries a few bytes once, then
idles. Memory of the relay is sampled at several stream counts, each once the
new streams have been idle for IDLE_WAIT seconds (the relay parks a pump after
0.25-0.5 s of silence, relay.park); the figure is the slope (bytes per extra
stream) and (RSS(N) - RSS(0)) / N.

Compared in the same run with
* socat: one process per stream (``TCP-LISTEN,fork``); a few hundred streams are
  measured (RSS and PSS of the per-stream children) and extrapolated to N;
* direct: clients connect straight to the sink; no user-space relay at all (0 B),
  timed to show what the relay adds to setting streams up.

Writes bench/results/relay_idle.json and .png (or $VIC_BENCH_RESULTS).
``--smoke``: 100 streams, 20 socat streams, one repetition.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _plots
from _common import free_port, raise_nofile, results_dir, verdict
from _procmem import children, mem_kib, settle
from _rounds import interleaved
from _steal import Watch, describe, stamp

ROOT = Path(__file__).resolve().parents[1]
KIB = 1024
PAYLOAD = b"hello from the vm\n"
IDLE_WAIT = 1.0  # seconds between the last stream of a step opening and the sample


# --------------------------------------------------------------------- the sink


def sink_main() -> None:
    """Accept and hold connections; answer each stdin line with the count held."""
    raise_nofile()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(65535)
    ls.setblocking(False)
    print(ls.getsockname()[1], flush=True)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    held: list[socket.socket] = []
    while True:
        for key, _ in sel.select():
            if key.fileobj is ls:
                while True:
                    try:
                        c, _ = ls.accept()
                    except BlockingIOError:
                        break
                    held.append(c)
            else:
                line = sys.stdin.readline()
                if not line:
                    return
                print(len(held), flush=True)


class Sink:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--role", "sink"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def count(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("n\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def wait_count(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while (got := self.count()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sink holds {got} of {n} streams")
            time.sleep(0.05)

    def close(self) -> None:
        stop(self.proc)


# --------------------------------------------------------------------- helpers


def stop(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_listening(port: int, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def open_clients(port: int, n: int, into: list[socket.socket]) -> None:
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(PAYLOAD)
        into.append(s)


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()
    socks.clear()


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares bytes per stream from (streams, KiB) points."""
    xs = [p[0] for p in points]
    ys = [p[1] * KIB for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


# --------------------------------------------------------------------- runs


def run_relay(n: int, steps: list[int], tries: int) -> dict[str, Any]:
    sink = Sink()
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="relay-idle-"))
    cfg = tmp / "relay.toml"
    cfg.write_text(
        f'host = "bench"\nlog-level = "warning"\n'
        f'[egress.default]\nkind = "tcp"\nhost = "127.0.0.1"\nport = {sink.port}\n'
        f"[limits]\nmax-streams = {n + 100}\nmax-streams-per-vm = {n + 100}\n"
        f"accept-rate = 1000000.0\naccept-burst = {n + 100}\n"
        f"[metrics]\nenabled = false\n[timeouts]\ndrain = 0.5\n"
        f'[[tcp]]\nname = "idle"\nvm = "bench-vm"\nport = {port}\n'
    )
    vic = ROOT / ".venv" / "bin" / "vic"
    cmd = [str(vic)] if vic.exists() else [sys.executable, "-m", "vic.cli"]
    proc = subprocess.Popen([*cmd, "relay", "--config", str(cfg)], stderr=subprocess.DEVNULL)
    clients: list[socket.socket] = []
    try:
        wait_listening(port, proc)
        # Warm up (imports, first-use allocations), then measure from a clean slate.
        open_clients(port, min(50, n), clients)
        sink.wait_count(len(clients))
        close_all(clients)
        time.sleep(0.2 if n <= 100 else 1.0)
        base_sink = sink.count()
        points = [(0, float(settle(proc.pid, tries)[0]))]
        pss_points = [(0, float(mem_kib(proc.pid)[1]))]
        t0 = time.monotonic()
        opening = 0.0
        for target in steps:
            open_clients(port, target - len(clients), clients)
            sink.wait_count(base_sink + target)
            opening += time.monotonic() - t0
            time.sleep(IDLE_WAIT)
            rss, pss = settle(proc.pid, tries)
            t0 = time.monotonic()
            points.append((target, float(rss)))
            pss_points.append((target, float(pss)))
        alive = proc.poll() is None
    finally:
        close_all(clients)
        stop(proc)
        sink.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if not alive:
        raise RuntimeError("relay died during the run")
    base = points[0][1]
    return {
        "streams": n,
        "rss_kib": points,
        "pss_kib": pss_points,
        "per_stream_bytes_slope": slope(points),
        "per_stream_bytes_total": (points[-1][1] - base) * KIB / n,
        "open_seconds": opening,
    }


def run_socat(k: int) -> dict[str, Any]:
    sink = Sink()
    port = free_port()
    proc = subprocess.Popen(
        [
            "socat",
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=4096",
            f"TCP:127.0.0.1:{sink.port}",
        ],
        stderr=subprocess.DEVNULL,
    )
    clients: list[socket.socket] = []
    try:
        wait_listening(port, proc)
        parent_rss, _parent_pss = mem_kib(proc.pid)
        open_clients(port, k, clients)
        sink.wait_count(k)  # (the probe's stream may add one; it ends at once)
        time.sleep(0.5)
        kids = children(proc.pid)
        mems = [mem_kib(pid) for pid in kids]
    finally:
        close_all(clients)
        stop(proc)
        for pid in children(proc.pid):
            try:
                os.kill(pid, 15)
            except OSError:
                pass
        sink.close()
    rss = sum(m[0] for m in mems)
    pss = sum(m[1] for m in mems)
    return {
        "streams": len(mems),
        "processes": len(mems) + 1,
        "parent_rss_kib": parent_rss,
        "per_stream_rss_bytes": rss * KIB / max(1, len(mems)),
        "per_stream_pss_bytes": pss * KIB / max(1, len(mems)),
    }


def run_direct(n: int) -> dict[str, Any]:
    """No relay: the clients hold streams to the sink itself (user-space cost 0;
    timed to show the set-up cost the relay adds)."""
    sink = Sink()
    clients: list[socket.socket] = []
    try:
        t0 = time.monotonic()
        open_clients(sink.port, n, clients)
        sink.wait_count(n)
        secs = time.monotonic() - t0
    finally:
        close_all(clients)
        sink.close()
    return {"streams": n, "relay_bytes_per_stream": 0, "open_seconds": secs}


def plot(result: dict[str, Any], path: Path) -> None:
    plt = _plots.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    n = result["streams"]
    for i, run in enumerate(result["relay_runs"]):
        base = run["rss_kib"][0][1]
        pts = [p for p in run["rss_kib"] if p[0] > 0]
        ax1.plot(
            [p[0] for p in pts],
            [(p[1] - base) / 1024 for p in pts],
            marker="o",
            color=_plots.OURS,
            label="vic relay (measured)" if i == 0 else None,
        )
    s = result["socat"]
    socat_pb, socat_pss = s["per_stream_rss_bytes_median"], s["per_stream_pss_bytes_median"]
    xs = [max(1, n // 100), n]
    if socat_pb:
        for per, style, what in ((socat_pb, "--", "RSS"), (socat_pss, ":", "PSS")):
            ax1.plot(
                xs,
                [per * x / 2**20 for x in xs],
                style,
                color=_plots.SOCAT,
                label=f"socat {what} (one process each, extrapolated)",
            )
    ax1.plot(xs, [10 * KIB * x / 2**20 for x in xs], ":", color="red", label="10 KiB/stream target")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("idle streams (log scale)")
    ax1.set_ylabel("added memory (MiB, log scale)")
    ax1.legend(fontsize=8)
    ax1.set_title("memory of the relaying process(es); direct adds none")
    relay = result["relay"]["per_stream_bytes_median"] / KIB
    _plots.bars(
        ax2,
        ["vic relay", "socat (PSS)", "direct"],
        [relay, socat_pss / KIB, 0.0],
        fmt="{:.1f}",
    )
    ax2.axhline(10, color="red", linestyle=":", label="target 10 KiB")
    ax2.set_ylabel("KiB per idle stream (user space)")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.set_title(
        f"per idle stream: socat PSS/relay {_plots.times(s.get('ratio_pss_socat_over_relay'))}\n"
        f"(socat RSS {socat_pb / KIB:.0f} KiB per process: off this chart)",
        fontsize=10,
    )
    _plots.finish(fig, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", default="bench", choices=["bench", "sink"])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--streams", type=int, default=9000)
    ap.add_argument("--socat-streams", type=int, default=300)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--replot", action="store_true", help="redraw the PNG from the JSON")
    args = ap.parse_args()
    if args.role == "sink":
        sink_main()
        return 0
    name = "relay_idle_smoke" if args.smoke else "relay_idle"
    if args.replot:
        js = results_dir() / f"{name}.json"
        plot(json.loads(js.read_text()), js.with_suffix(".png"))
        return 0
    raise_nofile()
    n, k, reps = args.streams, args.socat_streams, args.reps
    if args.smoke:
        n, k, reps = 100, 20, 1
    steps = [n] if args.smoke else sorted({max(1, n * i // 4) for i in range(1, 5)})
    tries = 3 if args.smoke else 20
    watch = Watch()
    runs = measure(n, k, reps, steps, tries)
    result = stamp(summarize(args.smoke, n, k, reps, *runs), watch)
    out = results_dir()
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    plot(result, out / f"{name}.png")
    print_summary(result, n, reps)
    print(describe(result))
    print(f"wrote {out / (name + '.json')} and .png")
    return 0


Runs = list[dict[str, Any]]


def measure(n: int, k: int, reps: int, steps: list[int], tries: int) -> tuple[Runs, Runs, Runs]:
    """Every repetition, interleaved: the relay, socat (if installed), direct."""

    def one(r: int, name: str) -> dict[str, Any]:
        if name == "direct":
            return run_direct(n)
        if name == "relay":
            x = run_relay(n, steps, tries)
            print(
                f"rep {r + 1}: relay {x['per_stream_bytes_slope']:.0f} B/stream (slope), "
                f"{x['per_stream_bytes_total']:.0f} B/stream (total)",
                flush=True,
            )
            return x
        x = run_socat(k)
        print(
            f"rep {r + 1}: socat {x['per_stream_rss_bytes'] / KIB:.0f} KiB RSS, "
            f"{x['per_stream_pss_bytes'] / KIB:.0f} KiB PSS per stream",
            flush=True,
        )
        return x

    names = ["relay", "socat", "direct"] if shutil.which("socat") else ["relay", "direct"]
    runs = interleaved(reps, names, one)
    return runs["relay"], runs.get("socat", []), runs["direct"]


def summarize(
    smoke: bool, n: int, k: int, reps: int, relay_runs: Runs, socat_runs: Runs, direct_runs: Runs
) -> dict[str, Any]:
    """The JSON result: every run, and the medians over them."""
    med = statistics.median
    relay_pb = med(r["per_stream_bytes_slope"] for r in relay_runs)
    result: dict[str, Any] = {
        "bench": "relay_idle",
        "smoke": smoke,
        "streams": n,
        "reps": reps,
        "host": {
            "python": platform.python_version(),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
        },
        "relay_runs": relay_runs,
        "relay": {
            "per_stream_bytes_median": relay_pb,
            "per_stream_bytes_total_median": med(r["per_stream_bytes_total"] for r in relay_runs),
            "open_seconds_median": med(r["open_seconds"] for r in relay_runs),
            "target_bytes": 10 * KIB,
            "meets_target": relay_pb <= 10 * KIB,
        },
        "socat_runs": socat_runs,
        "direct_runs": direct_runs,
        "direct": {
            "relay_bytes_per_stream": 0,
            "open_seconds_median": med(r["open_seconds"] for r in direct_runs),
        },
    }
    result["socat"] = socat_summary(k, n, relay_pb, socat_runs)
    return result


def socat_summary(k: int, n: int, relay_pb: float, socat_runs: Runs) -> dict[str, Any]:
    if not socat_runs:
        return {
            "per_stream_rss_bytes_median": 0.0,
            "per_stream_pss_bytes_median": 0.0,
            "skipped": "socat not installed",
        }
    med = statistics.median
    s_rss = med(r["per_stream_rss_bytes"] for r in socat_runs)
    s_pss = med(r["per_stream_pss_bytes"] for r in socat_runs)
    return {
        "measured_streams": k,
        "per_stream_rss_bytes_median": s_rss,
        "per_stream_pss_bytes_median": s_pss,
        "extrapolated_rss_mib_at_n": s_rss * n / 2**20,
        "extrapolated_pss_mib_at_n": s_pss * n / 2**20,
        "ratio_rss_socat_over_relay": s_rss / relay_pb if relay_pb > 0 else None,
        "ratio_pss_socat_over_relay": s_pss / relay_pb if relay_pb > 0 else None,
    }


def print_summary(result: dict[str, Any], n: int, reps: int) -> None:
    relay_pb = result["relay"]["per_stream_bytes_median"]
    print(
        f"relay: {relay_pb:.0f} B/stream (median slope over {reps} runs, {n} streams); "
        f"target <= {10 * KIB}: {verdict(result['relay']['meets_target'], result['smoke'])}"
    )
    if result["socat_runs"]:
        s = result["socat"]
        print(
            f"socat: {s['per_stream_rss_bytes_median'] / KIB:.0f} KiB RSS / "
            f"{s['per_stream_pss_bytes_median'] / KIB:.0f} KiB PSS per stream "
            f"(x{s['ratio_rss_socat_over_relay']:.0f} / x{s['ratio_pss_socat_over_relay']:.0f} "
            f"the relay); {n} streams would take {s['extrapolated_rss_mib_at_n']:.0f} MiB RSS"
        )
    print(
        f"direct: 0 B of user space per stream; opening {n} streams took "
        f"{result['direct']['open_seconds_median']:.1f} s direct, "
        f"{result['relay']['open_seconds_median']:.1f} s through the relay"
    )


if __name__ == "__main__":
    sys.exit(main())
