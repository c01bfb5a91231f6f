"""Issue 14's Docker endpoint, with the stock `docker` client, as real processes
(`vic vspc` with sessions and ``[docker]``, `vic relay`, the agent's tether: the chain
of bench/session_exec.py, ``_docker_chain``):

* ``docker logs --tail 100 VM`` latency with a GiB of history in the VM's container
  log (written beforehand in the appliance's file format: see ``_docker_chain``),
  against ``docker ps`` (the client's floor), and the same two as bare HTTP requests
  on the endpoint's socket (no client start);
* ``docker exec VM cat BIGFILE > /dev/null`` against ``vic console exec VM -- cat``
  (the sealed session without the Docker layer) and the raw console path (a relayed
  raw stream into the console log), with CPU per GiB of each process;
* 200 concurrent ``docker exec VM true``: wall time of the lot, each one's latency,
  failures (the agent's tether takes ``--guest-max-execs`` at once; its default, 64,
  refuses the rest with "too many execs running").

Rounds interleaved, medians and ratios; the load average and the CPU stolen by the
hypervisor recorded beside each section. JSON and PNG into bench/results (or
$VIC_BENCH_RESULTS).

    .venv/bin/python bench/docker_endpoint.py [--history-mib 1024] [--mib 256]
        [--rounds 5] [--concurrent 200] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _plots
from _common import proc_cpu, results_dir
from _docker_chain import cat_through, docker_binary, docker_chain, docker_env
from _rounds import ainterleaved
from _session_chain import VM, Chain, exec_ready
from _session_echo import percentiles
from _session_throughput import raw_console, session_cat
from _steal import Watch, describe, stamp
from session_exec import make_data

NAME = "docker_endpoint"
TAIL = 100


async def with_environment(work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """``work``'s result with the load around it and the steal during it."""
    watch = Watch()
    return stamp(await work, watch)


async def timed_run(cmd: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    t0 = time.monotonic()
    r = await trio.run_process(cmd, env=env, capture_stdout=True, capture_stderr=True)
    return time.monotonic() - t0, r.stdout + r.stderr


async def http_get(sock: Path, target: str) -> tuple[float, bytes]:
    """One request on a fresh connection to the endpoint: (seconds, the response)."""
    t0 = time.monotonic()
    s = await trio.open_unix_socket(str(sock))
    async with s:
        await s.send_all(
            f"GET {target} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode()
        )
        got = bytearray()
        while data := await s.receive_some(1 << 20):
            got += data
    if not got.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"GET {target}: {bytes(got[:200])!r}")
    return time.monotonic() - t0, bytes(got)


async def logs_tail(c: Chain, docker: str, rounds: int) -> dict[str, Any]:
    env, sock = docker_env(c.tmp), c.tmp / "docker.sock"
    logs = f"/v1.45/containers/{VM}/logs?stdout=1&stderr=1&tail={TAIL}"
    contenders: dict[str, Callable[[], Awaitable[tuple[float, bytes]]]] = {
        "docker_logs_tail": lambda: timed_run([docker, "logs", "--tail", str(TAIL), VM], env),
        "docker_ps": lambda: timed_run([docker, "ps", "-a"], env),
        "http_logs_tail": lambda: http_get(sock, logs),
        "http_ping": lambda: http_get(sock, "/_ping"),
    }

    async def one(_: int, name: str) -> float:
        wall, out = await contenders[name]()
        lines = out.count(b"\n")
        if name == "docker_logs_tail" and lines != TAIL:
            raise RuntimeError(f"docker logs --tail {TAIL}: {lines} lines")
        return wall

    runs = await ainterleaved(rounds, list(contenders), one)
    med = {name: statistics.median(xs) for name, xs in runs.items()}
    return {
        "median_s": med,
        "docker_logs_tail_vs_docker_ps": med["docker_logs_tail"] / med["docker_ps"],
        "http_logs_tail_vs_http_ping": med["http_logs_tail"] / med["http_ping"],
        "runs_s": runs,
    }


async def exec_cat(c: Chain, docker: str, data: Path, size: int, rounds: int) -> dict[str, Any]:
    env = docker_env(c.tmp)

    async def one(_: int, name: str) -> Any:
        if name == "docker_exec":
            return await cat_through(c, [docker, "exec", VM, "cat", str(data)], size, env)
        if name == "console_exec":
            return await session_cat(c, data, size)
        if name == "raw":
            return await raw_console(c, data, size)
        return (await timed_run([docker, "exec", VM, "true"], env))[0]

    runs = await ainterleaved(rounds, ["docker_exec", "console_exec", "raw", "floor"], one)
    floor: list[float] = runs.pop("floor")
    gib = size / (1 << 30)
    out: dict[str, Any] = {"docker_exec_true_s": statistics.median(floor)}
    for name, rs in runs.items():
        cpu = {p: statistics.median(r["cpu_s"][p] for r in rs) / gib for p in rs[0]["cpu_s"]}
        out[name] = {
            "MBps": statistics.median(r["MBps"] for r in rs),
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "cpu_s_per_gib": cpu,
            "cpu_s_per_gib_total": sum(v for p, v in cpu.items() if p != "client"),
        }
    for other in ("console_exec", "raw"):
        o = out[other]
        out[f"docker_exec_vs_{other}"] = {
            "throughput": out["docker_exec"]["MBps"] / o["MBps"],
            "cpu_per_gib": out["docker_exec"]["cpu_s_per_gib_total"] / o["cpu_s_per_gib_total"],
        }
    out["runs"] = runs
    return out


async def concurrent_exec(c: Chain, docker: str, n: int) -> dict[str, Any]:
    """``n`` ``docker exec VM true`` at once."""
    env = docker_env(c.tmp)
    walls: list[float] = []
    errors: list[str] = []
    cpu0 = proc_cpu(c.vspc.pid)

    async def one() -> None:
        t0 = time.monotonic()
        cmd = [docker, "exec", VM, "true"]
        r = await trio.run_process(cmd, env=env, capture_stderr=True, check=False)
        walls.append(time.monotonic() - t0)
        if r.returncode != 0:
            errors.append(r.stderr.decode(errors="replace").strip()[-200:])

    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    total = time.monotonic() - t0
    return {
        "n": n,
        "total_s": total,
        "execs_per_s": n / total,
        "failed": len(errors),
        "errors": sorted(set(errors))[:5],
        "latency": percentiles(walls),
        "appliance_cpu_s": proc_cpu(c.vspc.pid) - cpu0,
    }


async def run(args: argparse.Namespace, docker: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dockerbench-") as d:
        tmp = Path(d)
        size = make_data(tmp / "data", args.mib)
        chain = docker_chain(tmp, args.history_mib << 20, args.guest_max_execs)
        async with chain as (c, history):
            await exec_ready(c)
            tail = await with_environment(logs_tail(c, docker, args.rounds))
            cat = await with_environment(exec_cat(c, docker, tmp / "data", size, args.rounds))
            many = await with_environment(concurrent_exec(c, docker, args.concurrent))
    return {
        "bench": NAME,
        "smoke": args.smoke,
        "rounds": args.rounds,
        "history_bytes": history,
        "history_written_directly": True,
        "mib": args.mib,
        "guest_max_execs": args.guest_max_execs,
        "logs_tail": tail,
        "exec_cat": cat,
        "concurrent_exec": many,
    }


def plot(r: dict[str, Any], path: Path) -> None:
    plt = _plots.pyplot()
    fig, (a, b, e) = plt.subplots(1, 3, figsize=(15, 4.8))
    lt = r["logs_tail"]
    med = lt["median_s"]
    _plots.bars(
        a,
        list(med),
        [1e3 * v for v in med.values()],
        fmt="{:.1f}",
        colours=[_plots.OURS] * len(med),
    )
    a.set_ylabel("ms (median)")
    a.set_title(
        f"logs --tail {TAIL}, {r['history_bytes'] / (1 << 30):.2f} GiB history\n"
        f"docker logs/docker ps {_plots.times(lt.get('docker_logs_tail_vs_docker_ps'))}",
        fontsize=10,
    )
    t = r["exec_cat"]
    names = ["docker_exec", "console_exec", "raw"]
    _plots.bars(b, names, [t[n]["MBps"] for n in names])
    b.set_ylabel("MB/s (median)")
    d = t.get("docker_exec_vs_console_exec", {})
    b.set_title(
        f"cat of {r['mib']} MiB in the guest (no socat or direct path)\n"
        f"docker exec/console exec {_plots.times(d.get('throughput'))}",
        fontsize=10,
    )
    m = r["concurrent_exec"]
    _plots.bars(
        e,
        ["p50", "p99", "all done"],
        [m["latency"]["p50_ms"], m["latency"]["p99_ms"], 1e3 * m["total_s"]],
        colours=[_plots.OURS] * 3,
    )
    e.set_ylabel("ms")
    e.set_title(f"{m['n']} concurrent docker exec\n({m['failed']} failed)", fontsize=10)
    _plots.finish(fig, path)


def report(r: dict[str, Any]) -> None:
    def env(section: dict[str, Any]) -> str:
        return f"({describe(section)})"

    t = r["logs_tail"]
    med = ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in t["median_s"].items())
    print(f"logs --tail {TAIL} of {r['history_bytes'] >> 20} MiB: {med} {env(t)}")
    c = r["exec_cat"]
    for n in ("docker_exec", "console_exec", "raw"):
        print(f"cat {n:13} {c[n]['MBps']:8.1f} MB/s  CPU/GiB {c[n]['cpu_s_per_gib_total']:.2f} s")
    print(f"docker exec vs console exec {c['docker_exec_vs_console_exec']} {env(c)}")
    m = r["concurrent_exec"]
    lat = m["latency"]
    print(
        f"{m['n']} concurrent docker exec: {m['total_s']:.1f} s, p50 {lat['p50_ms']:.0f} ms, "
        f"p99 {lat['p99_ms']:.0f} ms, {m['failed']} failed {env(m)}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--history-mib", type=int, default=1024)
    p.add_argument("--mib", type=int, default=256, help="the file docker exec cats")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrent", type=int, default=200)
    p.add_argument(
        "--guest-max-execs",
        type=int,
        default=256,
        help="the agent's [session] max-execs (its default, 64, refuses the rest of 200)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny run, for tests")
    args = p.parse_args()
    if args.smoke:
        args.history_mib, args.mib, args.rounds, args.concurrent = 4, 2, 1, 4
    out = results_dir()
    docker = docker_binary()
    if docker is None:  # Debian's docker.io (the client only) is what this measures
        print("docker_endpoint: no docker client binary: nothing measured")
        (out / f"{NAME}.json").write_text(json.dumps({"bench": NAME, "skipped": "no docker"}))
        return 0
    watch = Watch()
    r = stamp(trio.run(run, args, docker), watch)
    (out / f"{NAME}.json").write_text(json.dumps(r, indent=2))
    plot(r, out / f"{NAME}.png")
    report(r)
    print(describe(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
