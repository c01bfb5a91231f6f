"""Shared pieces of the relay pump benchmarks (not a benchmark itself).

Starts one-hop relays (our pump in its own process, or socat), waits until they
listen, and measures their CPU time from readiness to exit.
"""

from __future__ import annotations

import json
import os
import platform
import select
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import free_port, proc_cpu, results_dir

ROOT = Path(__file__).resolve().parents[1]
PUMP_SERVER = ROOT / "bench" / "_pump_server.py"
SPLICE_FLOOR = ROOT / "bench" / "_splice_floor.py"


@dataclass
class Relay:
    """A one-hop relay process serving a single connection, then exiting.

    CPU is measured while the process lives: ``mark()`` before the transfer,
    ``cpu_since_mark()`` after it (so start-up and teardown are not counted).
    """

    name: str
    proc: subprocess.Popen[bytes]
    listen: str  # "tcp:HOST:PORT" or "unix:PATH"
    cpu_mark: float = field(default=0.0)

    def mark(self) -> None:
        self.cpu_mark = proc_cpu(self.proc.pid)

    def cpu_since_mark(self) -> float:
        return proc_cpu(self.proc.pid) - self.cpu_mark

    def finish(self, timeout: float = 30.0) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _readline(stream: Any, timeout: float, what: str) -> str:
    """One line from an unbuffered pipe (bufsize=0: select() sees every byte)."""
    fd = stream.fileno()
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        raise TimeoutError(f"timed out waiting for {what}")
    line = stream.readline()
    if not line:
        raise RuntimeError(f"{what}: process exited")
    return str(line.decode(errors="replace"))


def _start_ready(name: str, cmd: list[str]) -> Relay:
    """A relay process that prints ``READY <address>`` once it listens."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT, bufsize=0)
    assert proc.stdout is not None
    line = _readline(proc.stdout, 30, f"{name} READY")
    if not line.startswith("READY "):
        raise RuntimeError(f"{name} said {line!r}")
    return Relay(name, proc, line.split()[1])


def start_pump(listen: str, target: str, *, copy: bool = False) -> Relay:
    cmd = [sys.executable, str(PUMP_SERVER), "--listen", listen, "--target", target, "--once"]
    if copy:
        cmd.append("--copy")
    return _start_ready("pump-copy" if copy else "pump", cmd)


def start_splice_floor(listen: str, target: str) -> Relay:
    """bench/_splice_floor.py: blocking splice loops, no event loop (one connection)."""
    return _start_ready(
        "splice-floor",
        [sys.executable, str(SPLICE_FLOOR), "--listen", listen, "--target", target],
    )


def socat_address(addr: str, *, listen: bool, nodelay: bool) -> str:
    kind, _, rest = addr.partition(":")
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        opts = ",nodelay" if nodelay else ""
        if listen:
            return f"TCP-LISTEN:{port},bind={host},reuseaddr{opts}"
        return f"TCP:{host}:{port}{opts}"
    if listen:
        return f"UNIX-LISTEN:{rest},unlink-early"
    return f"UNIX-CONNECT:{rest}"


def start_socat(listen: str, target: str, *, bufsize: int = 262144, nodelay: bool = False) -> Relay:
    """socat serving one connection (no fork: the measured process does the work)."""
    if shutil.which("socat") is None:
        raise RuntimeError("socat is not installed")
    cmd = [
        "socat", "-d", "-d", "-b", str(bufsize),
        socat_address(listen, listen=True, nodelay=nodelay),
        socat_address(target, listen=False, nodelay=nodelay),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, bufsize=0)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while True:
        line = _readline(proc.stderr, max(0.1, deadline - time.monotonic()), "socat listening")
        if "listening on" in line:
            break
    return Relay("socat", proc, listen)


def connect(addr: str) -> socket.socket:
    kind, _, rest = addr.partition(":")
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(rest)
    return s


def listen_socket(kind: str, tmpdir: Path, name: str) -> tuple[socket.socket, str]:
    if kind == "tcp":
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        return s, f"tcp:127.0.0.1:{s.getsockname()[1]}"
    path = tmpdir / name
    if path.exists():
        path.unlink()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(16)
    return s, f"unix:{path}"


def relay_listen_addr(kind: str, tmpdir: Path, name: str) -> str:
    if kind == "tcp":
        return f"tcp:127.0.0.1:{free_port()}"
    path = tmpdir / name
    if path.exists():
        path.unlink()
    return f"unix:{path}"


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def percentile(sorted_xs: list[float], q: float) -> float:
    if not sorted_xs:
        return float("nan")
    k = min(len(sorted_xs) - 1, max(0, round(q * (len(sorted_xs) - 1))))
    return sorted_xs[k]


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "socat": shutil.which("socat"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(name: str, data: dict[str, Any]) -> Path:
    path = results_dir() / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path
