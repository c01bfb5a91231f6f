"""The harness of bench/mesh_two_hop.py: relay processes, the sink, transfers.

The relays are ``mesh_two_hop.py --role ingress|egress`` processes (ours) or a
two-hop socat chain; the client and the sink run in the bench process.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import free_port, proc_cpu

from vic.lab.polling import wait_until

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "mesh_two_hop.py"  # the bench (and its relay roles)
BLOCK = 1 << 20


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


def start_ours(
    sink_port: int, certs: Path | None, kill_every: float = 0.0, script: Path = SCRIPT
) -> list[Proc]:
    me = [sys.executable, str(script)]
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
