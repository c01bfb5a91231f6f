"""Shared pieces of the vSPC benchmarks: processes, ports, stats, results.

Not a benchmark itself (the leading underscore keeps tests/bench from running it).
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import free_port, results_dir

ROOT = Path(__file__).resolve().parents[1]
VIC = ROOT / ".venv" / "bin" / "vic"


def vic_command() -> list[str]:
    if VIC.exists():
        return [str(VIC)]
    return [sys.executable, "-m", "vic.cli"]


# ---------------------------------------------------------------- ports, processes


def tcp_listening(port: int) -> bool:
    """True once something LISTENs on ``port`` (reads /proc: does not consume an accept)."""
    want = f":{port:04X}"
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(want) and parts[3] == "0A":
                        return True
        except FileNotFoundError:
            continue
    return False


def wait_for(
    cond: Any, what: str, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    """Poll ``cond()`` (a benchmark harness, not a test: polling is fine here)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def socat_relay(target_port: int, buffer: int = 262144) -> Iterator[tuple[int, int]]:
    """``socat -b <buffer> TCP-LISTEN:p TCP:127.0.0.1:target`` for one connection: (port, pid)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "socat",
            "-b",
            str(buffer),
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
            f"TCP:127.0.0.1:{target_port}",
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: tcp_listening(port), "socat to listen", proc=proc)
        yield port, proc.pid
    finally:
        stop(proc)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------- the vSPC under test


@dataclass
class Vspc:
    proc: subprocess.Popen[Any]
    port: int
    metrics_port: int
    console_socket: Path
    log_dir: Path
    workdir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics_text(self, timeout: float = 30.0) -> str:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return str(r.read().decode())

    def metric(self, name: str, text: str | None = None) -> float | None:
        """First sample named exactly ``name`` (labels ignored); None if absent or unreachable."""
        try:
            text = text if text is not None else self.metrics_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None


def vspc_available() -> str | None:
    """None if ``vic vspc`` can run here, else the reason."""
    try:
        import vspc.service  # noqa: F401
    except Exception as e:  # the service may not have landed yet
        return f"vspc service not importable: {e}"
    return None


def _vspc_command(profile: Path | None, root: Path | None) -> list[str]:
    if profile is not None:
        return [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "vic.cli"]
    if root is not None:
        return [sys.executable, "-m", "vic.cli"]
    return vic_command()


@contextmanager
def run_vspc(
    workdir: Path,
    *,
    log_level: str = "warning",
    console_extra: str = "",
    extra: str = "",
    log_dir: Path | None = None,
    profile: Path | None = None,
    root: Path | None = None,
    loopwatch: bool = False,
) -> Iterator[Vspc]:
    """``vic vspc`` on free ports; ``console_extra`` goes into ``[console]``; ``root``: run
    the vSPC of another checkout (same-run A/B); ``loopwatch``: its event loop's figures
    in its metrics (vspc.loopwatch)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, mport = free_port(), free_port()
    sock = workdir / "console.sock"
    logs = log_dir if log_dir is not None else workdir / "consoles"
    cfg = workdir / "vspc.toml"
    cfg.write_text(
        f"""log-level = "{log_level}"
[listen]
host = "127.0.0.1"
port = {port}
identify-timeout = 120.0  # 16k simulated VMs connecting at once take a while to identify
[console]
socket = "{sock}"
log-dir = "{logs}"
ring-bytes = 65536
{console_extra}
[vmotion]
timeout = 30.0
max-concurrent = 64
[metrics]
host = "127.0.0.1"
port = {mport}
{extra}
"""
    )
    errlog = open(workdir / "vspc.stderr", "wb")
    env = dict(os.environ, VIC_VSPC_LOOPWATCH="1" if loopwatch else "0")
    if root is not None:  # `python -m` puts the working directory first on sys.path
        env["PYTHONPATH"] = str(root)
    proc = subprocess.Popen(
        [*_vspc_command(profile, root), "vspc", "--config", str(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=errlog,
        stderr=errlog,
        cwd=root if root is not None else ROOT,
        env=env,
    )
    try:
        wait_for(lambda: tcp_listening(port) and sock.exists(), "vspc to listen", proc=proc)
        yield Vspc(proc, port, mport, sock, logs, workdir)
    finally:
        stop(proc)
        errlog.close()


def tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except FileNotFoundError:
        return ""


# ---------------------------------------------------------------- stats, results


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return float(s[k])


def host_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(name: str, data: dict[str, Any]) -> Path:
    path = results_dir() / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def png_path(name: str) -> Path:
    return results_dir() / f"{name}.png"


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
