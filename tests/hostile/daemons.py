"""The real daemons for the hostile suite: `vic vspc` and `vic relay` as processes.

A daemon is started from a TOML file the test writes, on loopback ports picked
free beforehand (each simulated host on its own 127.0.0.x address), and is ready
when it says ``READY=1`` on a NOTIFY_SOCKET the test binds (vic.ops.sdnotify).
Its stderr (the daemon log) is collected, its Prometheus metrics scraped over
HTTP, its open file descriptors and resident memory read from /proc.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from vic.lab.polling import wait_until

REPO = Path(__file__).resolve().parents[2]
VIC = [sys.executable, "-m", "vic.cli"]
MiB = 1 << 20

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class DaemonExited(AssertionError):
    """The daemon exited (or never got ready) when the test needed it running."""


# ---- TOML (what the tests write: scalars, arrays of scalars, tables, arrays of tables)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f'"{k}" = {_scalar(x)}' for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, Mapping) for x in v)


def dump_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """A TOML document for ``data`` (nested dicts are tables, lists of dicts arrays of tables)."""
    lines = [f"{k} = {_scalar(v)}" for k, v in data.items()
             if not isinstance(v, Mapping) and not _is_table_array(v)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in data.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, Mapping):
            out += f"\n[{name}]\n" + dump_toml(v, name)
        elif _is_table_array(v):
            for item in v:
                out += f"\n[[{name}]]\n" + dump_toml(item, name)
    return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---- /proc


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_sockets(pid: int) -> int:
    """Open socket descriptors: what a connection costs (log files a console keeps
    open are not connections: they follow the console's retention)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # closed meanwhile
            pass
    return n


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


# ---- a running daemon


@dataclass
class Daemon:
    kind: str  # "vspc" | "relay"
    proc: trio.Process
    config_path: Path
    metrics_port: int | None
    notify: trio.socket.SocketType
    stderr: bytearray = field(default_factory=bytearray)
    states: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fds(self) -> int:
        self._alive()
        return open_fds(self.pid)

    def sockets(self) -> int:
        self._alive()
        return open_sockets(self.pid)

    def rss(self) -> int:
        self._alive()
        return rss_bytes(self.pid)

    def _alive(self) -> None:
        if self.proc.returncode is not None:
            raise DaemonExited(f"{self.kind} exited with {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        return self.stderr.decode("utf-8", "backslashreplace")

    def log_lines(self) -> list[str]:
        return self.log().splitlines()

    async def expect_state(self, state: str, timeout: float = 30.0) -> None:
        """Wait for an sd_notify state such as READY=1 (fails if the daemon exits first)."""
        with trio.fail_after(timeout):
            while state not in self.states:
                with trio.move_on_after(0.1):
                    data = await self.notify.recv(4096)
                    self.states.extend(data.decode().splitlines())
                    continue
                self._alive()
        self.states.remove(state)

    async def metrics(self) -> Samples:
        assert self.metrics_port is not None, "metrics disabled in this config"
        stream = await trio.open_tcp_stream("127.0.0.1", self.metrics_port)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            body = bytearray()
            with trio.fail_after(10):
                while chunk := await stream.receive_some(65536):
                    body += chunk
        head, _, text = bytes(body).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        out: Samples = {}
        for fam in text_string_to_metric_families(text.decode()):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        samples = await self.metrics()
        want = set(labels.items())
        return sum(v for (n, lb), v in samples.items() if n == name and want <= set(lb))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(timeout):
            return await self.proc.wait()

    async def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for chunk in self.proc.stderr:
            self.stderr += chunk


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll an observable condition (no event to wait on) until true, with a deadline."""
    await wait_until(predicate, timeout, what=what, interval=0.02)


async def wait_for_async(predicate: Callable[[], Any], timeout: float = 10.0,
                         what: str = "") -> None:
    """Like wait_for, for an async predicate (a metrics scrape, a console list)."""
    await wait_until(predicate, timeout, what=what, interval=0.05)


def write_config(workdir: Path, name: str, config: Mapping[str, Any] | str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.toml"
    path.write_text(config if isinstance(config, str) else dump_toml(config))
    return path


@asynccontextmanager
async def run_daemon(kind: str, workdir: Path, config: Mapping[str, Any] | str,
                     *, name: str | None = None,
                     metrics_port: int | None = None) -> AsyncIterator[Daemon]:
    """Start ``vic <kind> --config`` on ``config`` (a dict or TOML text) and wait
    until it is READY; on exit kill it if it still runs."""
    name = name or kind
    path = write_config(workdir, name, config)
    if metrics_port is None and isinstance(config, Mapping):
        m = config.get("metrics", {})
        metrics_port = m.get("port") if m.get("enabled", True) else None
    notify_path = workdir / f"{name}.notify"
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await notify.bind(str(notify_path))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    env.pop("WATCHDOG_USEC", None)
    proc = await trio.lowlevel.open_process(
        [*VIC, kind, "--config", str(path)], env=env, stderr=subprocess.PIPE, cwd=REPO)
    d = Daemon(kind, proc, path, metrics_port, notify)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(d._pump_stderr)
            try:
                await d.expect_state("READY=1")
                yield d
            finally:
                with trio.CancelScope(shield=True):
                    if proc.returncode is None:
                        proc.kill()
                    with trio.move_on_after(10):
                        await proc.wait()
    finally:
        notify.close()


@dataclass(frozen=True)
class Exit:
    code: int | None  # None: still running after the deadline (then killed)
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


async def start_expecting_exit(kind: str, workdir: Path, config: Mapping[str, Any] | str,
                               *, check: bool = False, timeout: float = 20.0) -> Exit:
    """Run ``vic <kind> --config`` (``--check`` if asked) and return how it ended.

    A daemon that starts instead of refusing its config is killed once it says
    READY=1 (or after ``timeout``), and reported with ``code=None``."""
    path = write_config(workdir, f"{kind}-refused", config)
    args = [*VIC, kind, "--config", str(path), *(["--check"] if check else [])]
    notify_path = workdir / f"{kind}-refused.notify"
    notify_path.unlink(missing_ok=True)
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await notify.bind(str(notify_path))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    proc = await trio.lowlevel.open_process(args, env=env, stderr=subprocess.PIPE, cwd=REPO)
    d = Daemon(kind, proc, path, None, notify)
    code: int | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(d._pump_stderr)
            with trio.move_on_after(timeout):
                async with trio.open_nursery() as race:
                    async def exited() -> None:
                        await proc.wait()
                        race.cancel_scope.cancel()

                    async def became_ready() -> None:
                        while "READY=1" not in d.states:
                            d.states.extend((await notify.recv(4096)).decode().splitlines())
                        race.cancel_scope.cancel()

                    race.start_soon(exited)
                    race.start_soon(became_ready)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            else:
                code = proc.returncode
    finally:
        notify.close()
    return Exit(code, d.log())
