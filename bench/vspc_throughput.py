"""VM -> console throughput through the vSPC, against socat and a direct connection.

One simulated ESX connection (vic.lab.esx_sim) writes N MiB of console output,
Telnet-encoded as ESX does (0xFF doubled), and a reader receives it:

* ``vspc``:   sim -> ``vic vspc`` (Telnet decode, log file, ring, fan-out) ->
              an attached read-only console client on the Unix socket;
* ``socat``:  the same wire bytes -> ``socat -b 262144`` -> a TCP reader;
* ``direct``: the same wire bytes -> a TCP reader;
* ``vspc_log``: sim -> ``vic vspc`` -> its byte-exact console log file only (no
  client attached; timed until the file holds every byte);
* ``vspc_ref``: as ``vspc``, through the vSPC of another checkout (``--ref ROOT``):
  a same-run A/B of two versions, interleaved with the rest.

The attached client's queue is configured large (the reader shares a process
with the sender, so it must not be dropped as a slow client: that policy is
tested elsewhere, not benchmarked here), and log rotation is set beyond the run.
A run's log file is emptied once checked (see ``release_log``), and the work
directory is removed at the end.

Two payloads: console text (no 0xFF) and random binary (0xFF about every 256
bytes). Each repetition runs the three paths in turn; the script prints the
median MiB/s (console bytes per second) and the vspc/socat ratio (goals, see
bench/_goals.py: >= 1.0 on text, >= 0.8 on binary), verifies every byte arrived
intact and in order, and writes JSON + PNG to bench/results/ (or $VIC_BENCH_RESULTS).

    .venv/bin/python bench/vspc_throughput.py [--mib 32] [--reps 5] [--smoke]
        [--paths direct,socat,vspc,vspc_log] [--kinds text,binary] [--ref ROOT]
        [--profile-vspc FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _plots
import _vspc_benchlib as bl
import trio
from _rounds import ainterleaved
from _steal import Watch, describe, stamp

from vic.lab import telnet_wire as tw
from vic.lab.esx_sim import EsxConnection, SimVM
from vic.lab.polling import wait_until

NAME = "vspc_throughput"
CHUNK = 256 * 1024
PATHS = ("direct", "socat", "vspc", "vspc_log", "vspc_ref")

_LINES = [
    "[{t:12.6f}] systemd[1]: Started {svc}.service - {svc} daemon.",
    "[{t:12.6f}] EXT4-fs (sda{n}): mounted filesystem with ordered data mode. Quota mode: none.",
    "[{t:12.6f}] vmxnet3 0000:0b:00.0 ens192: intel(R) link up, 10000 Mbps, full duplex",
    "{svc}[{n}]: GET /api/v1/containers/{n}/logs HTTP/1.1 200 {n} bytes in 0.{n:03d}s",
    '[{t:12.6f}] audit: type=1400 audit({t:.3f}:{n}): apparmor="STATUS" operation="profile_load"',
    "tether[{n}]: session {n:08x} started: /bin/sh -c 'echo hello; sleep {n}'",
]
_SVCS = ["sshd", "containerd", "vic-init", "tether", "chronyd", "journald", "dockerd"]


def console_text(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    t = 0.0
    while len(out) < size:
        t += rng.random() * 0.01
        line = rng.choice(_LINES).format(t=t, n=rng.randrange(1, 99999), svc=rng.choice(_SVCS))
        out += line.encode() + b"\r\n"
    return bytes(out[:size])


def binary(size: int, seed: int = 2) -> bytes:
    return random.Random(seed).randbytes(size)


# ---------------------------------------------------------------- the paths


def cpu_seconds(pid: int) -> float:
    """CPU time of a process's threads so far, to the nanosecond (schedstat; the
    clock-tick figure of /proc/<pid>/stat is 10 ms, a fifth of one run's)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # (a thread that ended: its time is lost, a few ms at most)
    return total / 1e9


async def _drain(stream: trio.abc.Stream, total: int, into: bytearray) -> None:
    while len(into) < total:
        chunk = await stream.receive_some(CHUNK)
        if not chunk:
            raise RuntimeError(f"EOF after {len(into)} of {total} bytes")
        into += chunk


async def _send_wire(stream: trio.abc.Stream, payload: bytes) -> None:
    # Same work as the simulator's send_console: escape each chunk, send it.
    for k in range(0, len(payload), CHUNK):
        await stream.send_all(tw.escape(payload[k : k + CHUNK]))


@dataclass
class Run:
    seconds: float
    middle_cpu: float  # CPU seconds of the relay in the middle (socat / vic vspc); 0 for direct
    bench_cpu: float  # CPU seconds of this process (sender + reader)
    log_bytes: int = -1


async def run_tcp(payload: bytes, via_socat: bool) -> Run:
    wire = tw.escape(payload)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    sink_port = listeners[0].socket.getsockname()[1]
    got = bytearray()
    try:
        with contextlib.ExitStack() as stack:
            if via_socat:
                port, pid = stack.enter_context(bl.socat_relay(sink_port))
            else:
                port, pid = sink_port, None
            sender = await trio.open_tcp_stream("127.0.0.1", port)
            receiver = await listeners[0].accept()
            c0, b0 = (cpu_seconds(pid) if pid else 0.0), time.process_time()
            t0 = time.perf_counter()
            async with trio.open_nursery() as n:
                n.start_soon(_drain, receiver, len(wire), got)
                await _send_wire(sender, payload)
            elapsed = time.perf_counter() - t0
            run = Run(
                elapsed,
                (cpu_seconds(pid) - c0) if pid else 0.0,
                time.process_time() - b0,
            )
            await sender.aclose()
            await receiver.aclose()
    finally:
        await listeners[0].aclose()
    if got != wire:
        raise RuntimeError("bytes differ after the relay")
    return run


async def attach(
    socket_path: Path, vm: SimVM, timeout: float = 10.0
) -> tuple[trio.abc.Stream, bytes]:
    """Attach read-only to a VM's console (raw attach protocol); retries until it exists."""
    req = json.dumps({"op": "attach", "vm": vm.canonical_uuid, "mode": "ro", "replay": 0}) + "\n"
    deadline = trio.current_time() + timeout
    last = ""
    while trio.current_time() < deadline:
        stream = await trio.open_unix_socket(str(socket_path))
        await stream.send_all(req.encode())
        buf = bytearray()
        while b"\n" not in buf:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            buf += chunk
        line, _, rest = bytes(buf).partition(b"\n")
        status = json.loads(line or b"{}")
        if status.get("ok"):
            return stream, rest
        last = str(status.get("error"))
        await stream.aclose()
        await trio.sleep(0.05)
    raise RuntimeError(f"attach failed: {last}")


def log_size(v: bl.Vspc, vm: SimVM) -> int:
    if not v.log_dir.exists():
        return 0
    return sum(p.stat().st_size for p in v.log_dir.glob(f"{vm.canonical_uuid}*.log"))


def release_log(v: bl.Vspc, vm: SimVM) -> None:
    """Empty a finished run's console log (checked already; its VM is gone).

    Otherwise every run's log stays in the page cache and the next run's log is
    written into memory the machine never touched before (on a VM guest each
    such page costs a fault in the host), a cost that grows with the number of
    runs and that a long-running vSPC, whose page cache recycles pages, does
    not pay.
    """
    for p in v.log_dir.glob(f"{vm.canonical_uuid}*.log"):
        os.truncate(p, 0)


async def run_vspc_log(v: bl.Vspc, payload: bytes, seed: int) -> Run:
    vm = SimVM.random(random.Random(seed), name=f"bench-{seed}")
    async with trio.open_nursery() as n:
        conn = await EsxConnection.open(n, "127.0.0.1", v.port, vm=vm)
        c0, b0 = cpu_seconds(v.pid), time.process_time()
        t0 = time.perf_counter()
        for k in range(0, len(payload), CHUNK):
            await conn.send_console(payload[k : k + CHUNK])
        with trio.fail_after(120):
            await wait_until(lambda: log_size(v, vm) >= len(payload), interval=0.002)
        elapsed = time.perf_counter() - t0
        run = Run(elapsed, cpu_seconds(v.pid) - c0, time.process_time() - b0, len(payload))
        await conn.aclose()
    logs = list(v.log_dir.glob(f"{vm.canonical_uuid}*.log"))
    if len(logs) != 1 or logs[0].read_bytes() != payload:
        raise RuntimeError("console log differs from what the VM wrote")
    release_log(v, vm)
    return run


async def run_vspc(v: bl.Vspc, payload: bytes, seed: int) -> Run:
    vm = SimVM.random(random.Random(seed), name=f"bench-{seed}")
    async with trio.open_nursery() as n:
        conn = await EsxConnection.open(n, "127.0.0.1", v.port, vm=vm)
        stream, first = await attach(v.console_socket, vm)
        got = bytearray(first)
        c0, b0 = cpu_seconds(v.pid), time.process_time()
        t0 = time.perf_counter()
        async with trio.open_nursery() as inner:
            inner.start_soon(_drain, stream, len(payload), got)
            for k in range(0, len(payload), CHUNK):
                await conn.send_console(payload[k : k + CHUNK])
        elapsed = time.perf_counter() - t0
        run = Run(elapsed, cpu_seconds(v.pid) - c0, time.process_time() - b0)
        await stream.aclose()
        await conn.aclose()
    if bytes(got) != payload:
        raise RuntimeError(f"console bytes differ ({len(got)} vs {len(payload)})")
    # The byte-exact log file catches up (written in the background).
    with trio.move_on_after(10):
        await wait_until(lambda: log_size(v, vm) >= len(payload), interval=0.05)
    run.log_bytes = log_size(v, vm)
    release_log(v, vm)
    return run


# ---------------------------------------------------------------- main


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    size = int(args.mib * 1024 * 1024)
    makers = {"text": console_text, "binary": binary}
    payloads = {k: makers[k](size) for k in args.kinds}
    wants_vspc = any(p.startswith("vspc") for p in args.paths)
    reason = bl.vspc_available() if wants_vspc else "not selected (--paths)"
    results: dict[str, Any] = {
        k: {p: {"seconds": [], "mib_s": [], "middle_cpu_s": [], "bench_cpu_s": []} for p in PATHS}
        for k in payloads
    }
    notes: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="vspc-bench-"))
    queue = max(64 << 20, 2 * max(len(tw.escape(p)) for p in payloads.values()))
    console_extra = f"client-queue-bytes = {queue}\nlog-max-bytes = {1 << 40}"
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        vspcs: dict[str, bl.Vspc] = {}
        if reason is None:
            vspcs["vspc"] = stack.enter_context(
                bl.run_vspc(workdir / "a", console_extra=console_extra, profile=args.profile_vspc)
            )
            if args.ref is not None and "vspc_ref" in args.paths:
                vspcs["vspc_ref"] = stack.enter_context(
                    bl.run_vspc(workdir / "b", console_extra=console_extra, root=args.ref)
                )
        else:
            notes.append(f"vspc paths skipped: {reason}")
        seeds = itertools.count(101)  # one VM per vSPC run

        async def one(rep: int, name: str) -> None:
            kind, path = name.split(" ")
            payload = payloads[kind]
            run = await run_path(path, vspcs, payload, seeds, workdir)
            if path.startswith("vspc") and run.log_bytes >= 0 and run.log_bytes != len(payload):
                notes.append(
                    f"rep {rep} {kind}: console log holds {run.log_bytes} of {len(payload)} bytes"
                )
            record(results[kind][path], size, run, f"rep {rep} {kind:6s} {path:8s}")

        def ready(p: str) -> bool:  # (vspc_log uses the vspc path's vSPC)
            return not p.startswith("vspc") or (p if p == "vspc_ref" else "vspc") in vspcs

        paths = [p for p in PATHS if p in args.paths and ready(p)]
        await ainterleaved(args.reps, [f"{k} {p}" for k in payloads for p in paths], one)
    return {
        "bench": NAME,
        "mib": args.mib,
        "reps": args.reps,
        "smoke": args.smoke,
        "paths": list(args.paths),
        "chunk": CHUNK,
        "target": {"text_vspc_vs_socat_min": 1.0, "binary_vspc_vs_socat_min": 0.8},
        "results": results,
        "summary": {kind: summarize(results[kind], args.mib) for kind in payloads},
        "notes": notes,
        "host": bl.host_info(),
    }


async def run_path(
    path: str, vspcs: dict[str, bl.Vspc], payload: bytes, seeds: Iterator[int], workdir: Path
) -> Run:
    """One run of ``payload`` over one path."""
    if path == "vspc_log":
        return await run_vspc_log(vspcs["vspc"], payload, next(seeds))
    if path in ("vspc", "vspc_ref"):
        v = vspcs[path]
        try:
            return await run_vspc(v, payload, next(seeds))
        except Exception:
            print(bl.tail(v.workdir / "vspc.stderr"), file=sys.stderr)
            raise
    return await run_tcp(payload, via_socat=(path == "socat"))


def record(r: dict[str, list[float]], size: int, run: Run, what: str) -> None:
    secs = run.seconds
    r["seconds"].append(secs)
    r["mib_s"].append(size / secs / 2**20)
    r["middle_cpu_s"].append(run.middle_cpu)
    r["bench_cpu_s"].append(run.bench_cpu)
    print(
        f"{what} {size / secs / 2**20:9.1f} MiB/s"
        f"  middle cpu {run.middle_cpu * 1e3:6.1f} ms  bench cpu {run.bench_cpu * 1e3:6.1f} ms",
        flush=True,
    )


def _ratio(a: float, b: float) -> float | None:
    return a / b if a == a and b == b else None  # NaN when a path did not run


def summarize(results: dict[str, Any], mib: float) -> dict[str, Any]:
    """Medians of one payload kind over the repetitions, and the ratios between paths."""
    med = {p: bl.median(results[p]["mib_s"]) for p in PATHS}
    cpu = {p: bl.median(results[p]["middle_cpu_s"]) for p in PATHS}
    per_cpu = {
        p: (mib / cpu[p] if cpu[p] == cpu[p] and cpu[p] > 0 else None)
        for p in ("socat", "vspc", "vspc_log", "vspc_ref")
    }
    return {
        "median_mib_s": med,
        "median_middle_cpu_s": cpu,
        "mib_per_middle_cpu_s": per_cpu,
        "vspc_vs_socat": _ratio(med["vspc"], med["socat"]),
        "vspc_vs_direct": _ratio(med["vspc"], med["direct"]),
        "vspc_log_vs_socat": _ratio(med["vspc_log"], med["socat"]),
        "vspc_vs_vspc_ref": _ratio(med["vspc"], med["vspc_ref"]),
        "socat_vs_direct": _ratio(med["socat"], med["direct"]),
    }


def plot(data: dict[str, Any], path: Path) -> None:
    plt = _plots.pyplot()
    kinds = list(data["summary"])
    fig, ax = plt.subplots(figsize=(8, 4.8))
    series: dict[str, list[float | None]] = {}
    errors: dict[str, tuple[list[float], list[float]]] = {}
    ran = [p for p in PATHS if any(data["results"][k].get(p, {}).get("mib_s") for k in kinds)]
    for p in ran:
        meds, lo, hi = [], [], []
        for kind in kinds:
            xs = data["results"][kind][p]["mib_s"]
            m = bl.median(xs) if xs else 0.0
            meds.append(m)
            lo.append(m - min(xs) if xs else 0.0)
            hi.append(max(xs) - m if xs else 0.0)
        series[p], errors[p] = list(meds), (lo, hi)
    _plots.grouped(ax, kinds, series, errors=errors, colours={"vspc_ref": _plots.OTHER})
    ratios = ", ".join(
        f"{k} {_plots.times(data['summary'][k].get('vspc_vs_socat'))}" for k in kinds
    )
    if "vspc_ref" in series:
        ratios += "; vspc/vspc_ref: " + ", ".join(
            f"{k} {_plots.times(data['summary'][k].get('vspc_vs_vspc_ref'))}" for k in kinds
        )
    ax.set_ylabel("console MiB/s (median, min-max)")
    ax.set_title(
        f"VM -> console throughput, {data['mib']} MiB x {data['reps']} reps\nvspc/socat: {ratios}",
        fontsize=10,
    )
    _plots.finish(fig, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=float, default=32.0, help="console MiB per run")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--kinds", default="text,binary", help="comma list of text,binary")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (< 20 s)")
    ap.add_argument("--paths", default=",".join(PATHS[:4]), help="comma list of " + ",".join(PATHS))
    ap.add_argument(
        "--ref",
        type=Path,
        default=None,
        help="checkout whose vSPC runs the vspc_ref path (added to --paths): a same-run A/B",
    )
    ap.add_argument("--profile-vspc", type=Path, default=None, help="cProfile output of the vSPC")
    args = ap.parse_args()
    args.paths = tuple(p for p in args.paths.split(",") if p)
    if args.ref is not None and "vspc_ref" not in args.paths:
        args.paths += ("vspc_ref",)
    args.kinds = tuple(k for k in args.kinds.split(",") if k)
    if not args.kinds or set(args.kinds) - {"text", "binary"}:
        ap.error("--kinds: a comma list of text, binary")
    if args.smoke:
        args.mib, args.reps = 1.0, 2
    watch = Watch()
    data = stamp(trio.run(bench, args), watch)
    out = bl.write_json(NAME, data)
    plot(data, bl.png_path(NAME))
    for kind, s in data["summary"].items():
        med = s["median_mib_s"]

        def fmt(r: float | None) -> str:
            return "n/a" if r is None else f"{r:.2f}x"

        print(
            f"{kind:6s}: direct {med['direct']:8.1f}  socat {med['socat']:8.1f}"
            f"  vspc {med['vspc']:8.1f}"
            f" vspc_log {med['vspc_log']:8.1f} MiB/s   vspc/socat {fmt(s['vspc_vs_socat'])}"
            f"   vspc_log/socat {fmt(s['vspc_log_vs_socat'])}"
            f"   socat/direct {fmt(s['socat_vs_direct'])}"
        )
        if args.ref is not None:
            print(
                f"        vspc_ref {med['vspc_ref']:8.1f} MiB/s"
                f"   vspc/vspc_ref {fmt(s['vspc_vs_vspc_ref'])}"
            )
        pc = s["mib_per_middle_cpu_s"]
        print(
            "        MiB per CPU-second of the relay process: "
            + "  ".join(f"{p} {'n/a' if x is None else f'{x:.0f}'}" for p, x in pc.items())
        )
    for note in data["notes"]:
        print("note:", note)
    print(describe(data))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
