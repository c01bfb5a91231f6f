"""Console throughput, container process -> appliance, through the guest agent.

Two paths, each with three contenders interleaved (bench/_rounds.py): every round runs
each once.

* ``hybrid``: hybrid vsock guest->host, i.e. the host-side Unix socket
  ``<uds>_<port>`` the appliance (this bench) listens on.
* ``pty``: a serial line, played by a pty pair: the guest side writes the
  slave (configured raw), the appliance reads the master.

Contenders: ``agent`` (a real ``vic agent`` process running a session
``head -c SIZE /dev/zero`` and carrying its output over the path), ``socat``
(``socat -u EXEC:'head -c SIZE /dev/zero' <same path>``, the same job done by
socat) and ``direct`` (``head`` writing straight into the path: the floor).
Throughput is measured at the appliance, first byte to last byte.

Writes agent_console.json and .png under bench/results (or $VIC_BENCH_RESULTS).
``--smoke``: a few MiB, one repetition.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pty
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _plots  # noqa: E402
from _common import results_dir  # noqa: E402
from _rounds import interleaved  # noqa: E402
from _steal import Watch, describe, stamp  # noqa: E402

from common.io.guestinfo.filestore import FileStore  # noqa: E402
from common.proto import guestinfo as gi  # noqa: E402

PORT = 1024


def read_exact(read_into: Any, size: int) -> float:
    """Read ``size`` bytes; return MB/s from first to last byte."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    got = read_into(view)
    if got <= 0:
        raise RuntimeError("EOF before any data")
    t0 = time.perf_counter()
    first = got
    while got < size:
        n = read_into(view)
        if n <= 0:
            raise RuntimeError(f"EOF after {got} of {size} bytes")
        got += n
    dt = time.perf_counter() - t0
    return float(size - first) / max(dt, 1e-9) / 1e6


class Store:
    """The appliance's side of the file-backed guestinfo for one VM."""

    def __init__(self, path: Path) -> None:
        self.store = FileStore(path)
        self.prev: str | None = None

    def run(self, sid: str, size: int) -> None:
        if self.prev is not None:
            vals = self.store.read().values
            self.store.update({k: None for k in vals if f"sessions|{self.prev}" in k})
        cfg = gi.SessionConfig(id=sid, path="head", args=("head", "-c", str(size), "/dev/zero"))
        self.store.update(gi.encode_sessions([cfg], sid))
        self.prev = sid

    def wait_status(self, sid: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while gi.status_key(sid) not in self.store.read().values:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no status for {sid}")
            time.sleep(0.002)  # bench only: not a test


def start_agent(tmp: Path, console: str) -> subprocess.Popen[bytes]:
    conf = tmp / "agent.toml"
    conf.write_text(
        f'[guestinfo]\nbackend = "file"\npath = "{tmp / "vm.json"}"\n'
        f"[console]\n{console}\n[network]\npublish = false\n"
        '[agent]\nsubreaper = false\nlog-level = "warning"\n'
    )
    return subprocess.Popen(
        [sys.executable, "-m", "vic.cli", "agent", "--config", str(conf)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def contenders() -> list[str]:
    return ["agent", "socat", "direct"] if shutil.which("socat") else ["agent", "direct"]


def bench_hybrid(size: int, reps: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="vic-console-") as d:
        tmp = Path(d)
        uds = tmp / "vm.vsock"
        path = f"{uds}_{PORT}"
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(path)
        lst.listen(4)
        store = Store(tmp / "vm.json")
        store.store.update({"guestinfo.x": "1"})
        agent = start_agent(tmp, f'transport = "hybrid"\npath = "{uds}"\nport = {PORT}')
        try:
            conn, _ = lst.accept()  # the agent's console link, kept across sessions

            def one(r: int, name: str) -> float:
                if name == "agent":
                    store.run(f"h{r}", size)
                    mbps = read_exact(conn.recv_into, size)
                    store.wait_status(f"h{r}")
                    return mbps
                if name == "socat":
                    p = subprocess.Popen(
                        ["socat", "-u", "-b", "65536", f"EXEC:head -c {size} /dev/zero",
                         f"UNIX-CONNECT:{path}"]
                    )  # fmt: skip
                    c, _ = lst.accept()
                else:
                    cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    cli.connect(path)
                    c, _ = lst.accept()
                    p = subprocess.Popen(
                        ["head", "-c", str(size), "/dev/zero"], stdout=cli.fileno()
                    )
                    cli.close()
                with c:
                    mbps = read_exact(c.recv_into, size)
                p.wait(30)
                return mbps

            res = interleaved(reps, contenders(), one)
            conn.close()
        finally:
            agent.terminate()
            agent.wait(10)
            lst.close()
    return res


def bench_pty(size: int, reps: int) -> dict[str, list[float]]:
    master, slave = pty.openpty()
    tty.setraw(slave)
    slave_path = os.ttyname(slave)

    def read_into(view: memoryview) -> int:
        return os.readv(master, [view])

    with tempfile.TemporaryDirectory(prefix="vic-console-") as d:
        tmp = Path(d)
        store = Store(tmp / "vm.json")
        store.store.update({"guestinfo.x": "1"})
        agent = start_agent(tmp, f'transport = "serial"\npath = "{slave_path}"')

        def one(r: int, name: str) -> float:
            if name == "agent":
                store.run(f"p{r}", size)
                mbps = read_exact(read_into, size)
                store.wait_status(f"p{r}")
                return mbps
            if name == "socat":
                p = subprocess.Popen(
                    ["socat", "-u", "-b", "65536", f"EXEC:head -c {size} /dev/zero",
                     f"OPEN:{slave_path},rawer"]
                )  # fmt: skip
                mbps = read_exact(read_into, size)
            else:
                with open(slave_path, "wb", buffering=0) as out:
                    p = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=out)
                    mbps = read_exact(read_into, size)
            p.wait(30)
            return mbps

        try:
            res = interleaved(reps, contenders(), one)
        finally:
            agent.terminate()
            agent.wait(10)
            os.close(master)
            os.close(slave)
    return res


def summarise(res: dict[str, list[float]]) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in res.items() if v}
    out: dict[str, Any] = {"runs_MBps": res, "median_MBps": med}
    if "agent" in med and "socat" in med:
        out["agent_over_socat"] = med["agent"] / med["socat"]
    if "agent" in med and "direct" in med:
        out["agent_over_direct"] = med["agent"] / med["direct"]
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    plt = _plots.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    names = ["agent", "socat", "direct"]
    paths = [p for p in ("hybrid", "pty") if p in result["paths"]]
    _plots.grouped(
        ax, paths, {n: [result["paths"][p]["median_MBps"].get(n) for p in paths] for n in names}
    )
    ax.set_ylabel("MB/s (median)")
    ratios = ", ".join(
        f"{p} {_plots.times(result['paths'][p].get('agent_over_socat'))}" for p in paths
    )
    ax.set_title(f"console throughput, process -> appliance\nagent/socat: {ratios}", fontsize=10)
    _plots.finish(fig, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()
    reps = args.reps or (1 if args.smoke else 5)
    watch = Watch()
    hybrid_size = (4 if args.smoke else 256) * 1024 * 1024
    pty_size = (2 if args.smoke else 64) * 1024 * 1024
    result: dict[str, Any] = {
        "params": {"reps": reps, "hybrid_bytes": hybrid_size, "pty_bytes": pty_size,
                   "smoke": args.smoke},
        "paths": {
            "hybrid": summarise(bench_hybrid(hybrid_size, reps)),
            "pty": summarise(bench_pty(pty_size, reps)),
        },
        "environment": {
            "python": platform.python_version(),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "socat": shutil.which("socat"),
        },
    }  # fmt: skip
    stamp(result, watch)
    name = "agent_console" + ("-smoke" if args.smoke else "")
    out = results_dir() / f"{name}.json"
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    plot(result, results_dir() / f"{name}.png")
    for p, s in result["paths"].items():
        med = s["median_MBps"]
        line = "  ".join(f"{k} {v:8.1f} MB/s" for k, v in med.items())
        ratios = "  ".join(
            f"{k} {s[k]:.2f}" for k in ("agent_over_socat", "agent_over_direct") if k in s
        )
        print(f"{p:7s} {line}   {ratios}")
    print(describe(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
