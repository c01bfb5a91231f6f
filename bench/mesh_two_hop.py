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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _steal import cpu_ticks, steal_since  # noqa: E402

from vic.lab.polling import wait_until  # noqa: E402

BLOCK = 1 << 20


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))


def results_dir() -> Path:
    d = Path(os.environ.get("VIC_BENCH_RESULTS", ROOT / "bench" / "results"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:
                continue
    except FileNotFoundError:
        return 0.0
    return total / 1e9


# =====================================================================  relay roles
def role_main(args: argparse.Namespace) -> None:  # noqa: C901
    import trio

    from common.link.peering import LinkServer, open_session_table
    from common.link.peerlink import LinkConfig
    from common.link.route import Route, Router
    from common.link.tls import TlsFiles
    from common.ops import runtime_tuning
    from common.proto.link.mux import MuxConfig
    from relay.pump import pump

    raise_nofile()
    runtime_tuning.tune_allocator()  # as `vic relay` does at start-up
    frame = int(os.environ.get("VIC_MESH_FRAME_KB", "256")) * 1024
    cfg = LinkConfig(
        mux=MuxConfig(max_payload=frame),
        reconnect_min=0.01,
        reconnect_max=0.2,
        read_size=max(frame, 256 * 1024),
        send_quantum=frame,
    )
    certs = Path(args.certs) if args.certs else None

    def files(name: str) -> TlsFiles | None:
        if certs is None:
            return None
        return TlsFiles(certs / f"host-{name}.crt", certs / f"host-{name}.key", certs / "ca.crt")

    async def egress() -> None:
        sink_host, sink_port = args.sink.rsplit(":", 1)
        async with open_session_table(cfg) as table, trio.open_nursery() as n:
            server = LinkServer(
                table, tls_files=files("egress"), allowed_peers={"vic://host/ingress"}, config=cfg
            )
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            await n.start(server.serve, listeners)
            print(f"READY {listeners[0].socket.getsockname()[1]}", flush=True)

            async def deliver(st: Any) -> None:
                out = await trio.open_tcp_stream(sink_host, int(sink_port))
                await pump(st, out)

            async for acc in table:
                n.start_soon(deliver, acc.stream)

    async def ingress() -> None:
        async with trio.open_nursery() as n:
            route = Route(
                f"tcp:127.0.0.1:{args.link_port}",
                identity="vic://host/egress",
                tls=certs is not None,
            )
            router = Router(route, n, tls_files=files("ingress"), config=cfg)
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=4096)

            async def handle(client: Any) -> None:
                st = await router.open_stream(b"bench")
                await pump(client, st)

            await n.start(trio.serve_listeners, handle, listeners)
            if args.kill_every:

                async def killer() -> None:
                    while True:
                        await trio.sleep(args.kill_every)
                        link = router.link
                        if link is not None and link.stream_count:
                            link.close("bench: killed")
                            print("KILLED", flush=True)

                n.start_soon(killer)
            print(f"READY {listeners[0].socket.getsockname()[1]}", flush=True)

    prof_dir = os.environ.get("VIC_MESH_PROFILE")
    if not prof_dir:
        trio.run(egress if args.role == "egress" else ingress)
        return
    import cProfile

    pr = cProfile.Profile()
    pr.enable()
    try:
        trio.run(egress if args.role == "egress" else ingress)
    except KeyboardInterrupt:
        pass
    finally:
        pr.disable()
        pr.dump_stats(f"{prof_dir}/{args.role}-{os.getpid()}.prof")


# =====================================================================  harness
class Proc:
    def __init__(self, argv: list[str], ready_port: int | None = None) -> None:
        self.p = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
        )
        self.port = ready_port
        if ready_port is None:
            assert self.p.stdout is not None
            line = self.p.stdout.readline().split()
            if not line or line[0] != "READY":
                self.kill()
                raise RuntimeError(f"{argv[:4]} did not start")
            self.port = int(line[1])
        else:
            wait_listening(ready_port)
        self.mark = 0.0

    def cpu(self) -> float:
        return proc_cpu(self.p.pid)

    def kill(self) -> None:
        self.output = ""
        if self.p.poll() is None:
            if os.environ.get("VIC_MESH_PROFILE"):
                self.p.send_signal(2)
                try:
                    self.p.wait(10)
                    return
                except subprocess.TimeoutExpired:
                    pass
            self.p.kill()
            self.p.wait()
        if self.p.stdout is not None:
            self.output = self.p.stdout.read()


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Until something LISTENs on 127.0.0.1:port (without connecting to it)."""
    want = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[1] == want and parts[3] == "0A":
                    return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


class Sink:
    """Accepts connections; counts (and optionally hashes) each until EOF."""

    def __init__(self, hashing: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        self.hashing = hashing
        self.results: list[tuple[int, float, str]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.expect = 1
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = bytearray(BLOCK)
        mv = memoryview(buf)
        h = hashlib.sha256() if self.hashing else None
        n = 0
        with conn:
            while True:
                k = conn.recv_into(buf)
                if not k:
                    break
                n += k
                if h is not None:
                    h.update(mv[:k])
        with self.lock:
            self.results.append((n, time.perf_counter(), h.hexdigest() if h else ""))
            if len(self.results) >= self.expect:
                self.done.set()

    def reset(self, expect: int = 1) -> None:
        with self.lock:
            self.results = []
            self.expect = expect
            self.done.clear()

    def close(self) -> None:
        self.sock.close()


def block_for(i: int, base: bytes) -> bytes:
    r = (i * 4099) % len(base)
    return base[r:] + base[:r]


def send_bulk(port: int, size: int, base: bytes, varied: bool) -> str:
    h = hashlib.sha256() if varied else None
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(size // BLOCK):
            blk = block_for(i, base) if varied else base
            if h is not None:
                h.update(blk)
            s.sendall(blk)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    return h.hexdigest() if h else ""


def run_bulk(
    port: int,
    sink: Sink,
    size: int,
    base: bytes,
    procs: list[Proc],
    varied: bool = False,
    timeout: float = 600,
) -> dict[str, Any]:
    sink.reset(1)
    cpu0 = [p.cpu() for p in procs]
    t0 = time.perf_counter()
    sent_hash = send_bulk(port, size, base, varied)
    if not sink.done.wait(timeout):
        raise RuntimeError("sink never saw EOF")
    n, t_end, got_hash = sink.results[0]
    dt = t_end - t0
    cpu = sum(p.cpu() for p in procs) - sum(cpu0)
    out = {
        "bytes": n,
        "seconds": dt,
        "mb_s": n / dt / 1e6,
        "relay_cpu_s": cpu,
        "cpu_s_per_gib": cpu / (n / (1 << 30)) if n else None,
    }
    if varied:
        out["intact"] = n == size and sent_hash == got_hash
    return out


def make_certs(d: Path) -> None:
    from common.io import certs

    certs.init_ca(d, key_type="ed25519")
    for name in ("ingress", "egress"):
        certs.issue(d, "host", name, dns_names=("localhost",))


def start_ours(sink_port: int, certs: Path | None, kill_every: float = 0.0) -> list[Proc]:
    me = [sys.executable, str(Path(__file__).resolve())]
    tls = ["--certs", str(certs)] if certs else []
    egress = Proc([*me, "--role", "egress", "--sink", f"127.0.0.1:{sink_port}", *tls])
    try:
        ingress = Proc(
            [
                *me,
                "--role",
                "ingress",
                "--link-port",
                str(egress.port),
                *tls,
                "--kill-every",
                str(kill_every),
            ]
        )
    except BaseException:
        egress.kill()
        raise
    return [ingress, egress]


def start_socat(sink_port: int, certs: Path | None) -> list[Proc]:
    p1, p2 = free_port(), free_port()
    b = ["-b", "262144"]
    if certs is None:
        hop2 = [
            "socat",
            *b,
            f"TCP-LISTEN:{p2},bind=127.0.0.1,reuseaddr,fork",
            f"TCP:127.0.0.1:{sink_port}",
        ]
        hop1 = [
            "socat",
            *b,
            f"TCP-LISTEN:{p1},bind=127.0.0.1,reuseaddr,fork",
            f"TCP:127.0.0.1:{p2}",
        ]
    else:
        e, i, ca = certs / "host-egress", certs / "host-ingress", certs / "ca.crt"
        hop2 = [
            "socat",
            *b,
            f"OPENSSL-LISTEN:{p2},bind=127.0.0.1,reuseaddr,fork,cert={e}.crt,key={e}.key,"
            f"cafile={ca},verify=1",
            f"TCP:127.0.0.1:{sink_port}",
        ]
        hop1 = [
            "socat",
            *b,
            f"TCP-LISTEN:{p1},bind=127.0.0.1,reuseaddr,fork",
            f"OPENSSL:localhost:{p2},cert={i}.crt,key={i}.key,cafile={ca},verify=1,"
            f"commonname=localhost",
        ]
    s2 = Proc(hop2, ready_port=p2)
    s1 = Proc(hop1, ready_port=p1)
    return [s1, s2]


# ---------------------------------------------------------------- many streams
def run_streams(
    port: int, lsock: socket.socket, n_streams: int, warm: float, measure: float
) -> dict[str, Any]:
    """``n_streams`` clients send flat out through ``port``; the sink on ``lsock``
    counts each connection's bytes during the measuring window (after ``warm``).
    Fairness = least / most bytes delivered by one stream in that window."""
    import trio

    block = os.urandom(8 * 1024)
    counts: list[int] = []

    async def sink_conn(conn: trio.SocketStream) -> None:
        i = len(counts)
        counts.append(0)
        try:
            while True:
                d = await conn.receive_some(256 * 1024)
                if not d:
                    break
                counts[i] += len(d)
        except trio.BrokenResourceError:
            pass

    async def client(connected: list[int]) -> None:
        s = await trio.open_tcp_stream("127.0.0.1", port)
        connected.append(1)
        try:
            while True:
                await s.send_all(block)
        except trio.BrokenResourceError:
            pass

    async def main() -> dict[str, Any]:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(lsock.dup()))
        connected: list[int] = []
        async with trio.open_nursery() as n:
            await n.start(trio.serve_listeners, sink_conn, [listener])
            for _ in range(n_streams):
                n.start_soon(client, connected)
            with trio.fail_after(120):
                await wait_until(lambda: len(counts) >= n_streams, interval=0.05)
            await trio.sleep(warm)
            c0, t0 = list(counts), time.perf_counter()
            await trio.sleep(measure)
            c1, t1 = list(counts), time.perf_counter()
            n.cancel_scope.cancel()
        got = [b - a for a, b in zip(c0, c1)]
        return {
            "streams": n_streams,
            "window_s": t1 - t0,
            "aggregate_mb_s": sum(got) / (t1 - t0) / 1e6,
            "fairness_slowest_over_fastest": min(got) / max(got) if max(got) else 0.0,
            "slowest_mb_s": min(got) / (t1 - t0) / 1e6,
            "fastest_mb_s": max(got) / (t1 - t0) / 1e6,
            "all_moving": min(got) > 0,
        }

    return trio.run(main)


# =====================================================================  main
def bench(args: argparse.Namespace) -> int:  # noqa: C901
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
    have_socat = shutil.which("socat") is not None
    sink = Sink()
    hsink = Sink(hashing=True)
    steal0 = cpu_ticks()
    results: dict[str, Any] = {
        "bench": "mesh_two_hop",
        "smoke": smoke,
        "size_bytes": size,
        "reps": reps,
        "host": platform.node(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "runs": {},
    }
    configs: list[tuple[str, Any]] = [  # (name, start function)
        ("direct", None),
        ("ours_tls", lambda: start_ours(sink.port, certs)),
        ("ours_plain", lambda: start_ours(sink.port, None)),
    ]
    if have_socat and not args.no_socat:
        configs += [
            ("socat_tls", lambda: start_socat(sink.port, certs)),
            ("socat_plain", lambda: start_socat(sink.port, None)),
        ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in configs}
    only = set(args.only or ["bulk", "streams", "kill"])
    if "bulk" not in only:
        reps = 0
    try:
        for rep in range(reps):
            for name, start in configs:
                procs = start() if start else []
                try:
                    port = procs[0].port if procs else sink.port
                    assert port is not None
                    r = run_bulk(port, sink, size, base, procs)
                finally:
                    for p in procs:
                        p.kill()
                runs[name].append(r)
                print(f"bulk rep {rep} {name:12} {r['mb_s']:8.1f} MB/s", flush=True)
        med = {k: statistics.median(x["mb_s"] for x in v) for k, v in runs.items() if v}
        cpu = {
            k: statistics.median(x["cpu_s_per_gib"] or 0 for x in v)
            for k, v in runs.items()
            if v and not k.startswith("socat")
        }
        results["runs"]["bulk"] = runs
        results["bulk_median_mb_s"] = med
        results["bulk_cpu_s_per_gib"] = cpu  # socat forks per connection: not measured
        if have_socat and reps and not args.no_socat:
            results["ratios"] = {
                "tls_ours_over_socat_tls": med["ours_tls"] / med["socat_tls"],
                "tls_ours_over_socat_plain": med["ours_tls"] / med["socat_plain"],
                "plain_ours_over_socat_plain": med["ours_plain"] / med["socat_plain"],
            }

        # ---- many streams over one TLS link
        if "streams" in only:
            lsock = socket.socket()
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(4096)
            lport = lsock.getsockname()[1]
            warm, measure = (0.5, 1.5) if smoke else (args.warm, args.measure)
            procs = start_ours(lport, certs)
            try:
                assert procs[0].port is not None
                results["streams"] = run_streams(procs[0].port, lsock, n_streams, warm, measure)
            finally:
                for p in procs:
                    p.kill()
            direct = run_streams(lport, lsock, n_streams, warm, measure)
            lsock.close()
            results["streams"]["direct_aggregate_mb_s"] = direct["aggregate_mb_s"]
            results["streams"]["direct_fairness"] = direct["fairness_slowest_over_fastest"]
            print(f"streams: {json.dumps(results['streams'])}", flush=True)

        # ---- link killed every second vs undisturbed, hashed end to end
        kill: dict[str, Any] = {}
        kill_every = 0.02 if smoke else args.kill_every  # smoke: tiny transfer, kill often
        for label, every in (("undisturbed", 0.0), ("killed", kill_every)):
            if "kill" not in only:
                break
            procs = start_ours(hsink.port, certs, kill_every=every)
            try:
                assert procs[0].port is not None
                kill[label] = run_bulk(procs[0].port, hsink, kill_size, base, procs, varied=True)
            finally:
                for p in procs:
                    p.kill()
            kill[label]["link_kills"] = procs[0].output.count("KILLED")
            print(f"kill {label}: {kill[label]}", flush=True)
        if kill:
            kill["throughput_ratio"] = kill["killed"]["mb_s"] / kill["undisturbed"]["mb_s"]
            results["kill"] = kill
    finally:
        sink.close()
        hsink.close()
        shutil.rmtree(tmp, ignore_errors=True)

    results["loadavg_end"] = os.getloadavg()  # the machine is shared: read ratios with this
    results["cpu_steal"] = steal_since(steal0)  # ...and with the hypervisor's share of the CPUs
    name = "mesh_two_hop-smoke" if smoke else "mesh_two_hop"
    if only != {"bulk", "streams", "kill"}:
        name += "-" + "-".join(sorted(only))
    out = results_dir() / name
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    if only == {"bulk", "streams", "kill"}:
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    med = results["bulk_median_mb_s"]
    names = list(med)
    axes[0].bar(
        names,
        [med[n] for n in names],
        color=[
            "#888" if n == "direct" else "#3a7" if n.startswith("ours") else "#c64" for n in names
        ],
    )
    axes[0].set_ylabel("MB/s (median)")
    axes[0].set_title(f"two hops, {results['size_bytes'] >> 20} MiB bulk")
    axes[0].tick_params(axis="x", rotation=30)
    s = results["streams"]
    axes[1].bar(
        ["aggregate", "direct"],
        [s["aggregate_mb_s"], s["direct_aggregate_mb_s"]],
        color=["#3a7", "#888"],
    )
    axes[1].set_title(
        f"{s['streams']} streams / one TLS link\n"
        f"fairness slowest/fastest = {s['fairness_slowest_over_fastest']:.2f}"
    )
    axes[1].set_ylabel("MB/s")
    k = results["kill"]
    axes[2].bar(
        ["undisturbed", "killed every s"],
        [k["undisturbed"]["mb_s"], k["killed"]["mb_s"]],
        color=["#3a7", "#c64"],
    )
    axes[2].set_title(
        f"link killed {k['killed']['link_kills']}x (every s): "
        f"intact={k['killed'].get('intact')}\n"
        f"ratio = {k['throughput_ratio']:.2f}"
    )
    axes[2].set_ylabel("MB/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
        role_main(args)
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
