"""Real `vic relay` / `vic vspc` processes for the suites that run whole daemons
(fault, hostile): started from TOML files written from dicts, ready when they say
READY=1 over sd_notify, killed (SIGKILL) or stopped (SIGTERM) and started again
with the same config, their output kept in one log file per daemon across restarts;
their Prometheus metrics scraped over HTTP, their sockets and memory read from /proc.

    d = Daemon("relay", "esx-b", {...config dict...}, tmp_path)
    await d.start()
    d.freeze()               # SIGSTOP: it holds bytes it has not passed on
    d.kill()                 # SIGKILL: no drain, no goodbye
    await d.wait_exit()
    await d.start()          # same config, same addresses
    await d.stop()           # SIGTERM, then wait (drain)

``Daemons`` keeps several and kills whatever still runs at the end of a test;
``run_daemon`` is one daemon for the length of an ``async with``;
``start_expecting_exit`` runs one that should refuse its config.
Every "host" gets its own loopback address (127.0.0.2, 127.0.0.3, ...), so a
port number never collides across hosts and each daemon's traffic is its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
MiB = 1 << 20

Table = dict[str, Any]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class DaemonExited(RuntimeError):
    """The daemon exited (or never got ready) when the test needed it running."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the daemon binds it again, with SO_REUSEADDR)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` different TCP ports free on ``host`` now: all bound at once while they are
    chosen (one at a time, the kernel may hand the same port out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]


# --- TOML out (tomllib only reads) ----------------------------------------------------


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):  # JSON's escapes are TOML's (and DEL escaped too)
        return json.dumps(str(v), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def _key(k: str) -> str:
    return k if k.replace("-", "").replace("_", "").isalnum() else _value(k)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, Mapping) for x in v)


def toml_dumps(doc: Mapping[str, Any], prefix: str = "") -> str:
    """Plain values first, then ``[tables]`` and ``[[arrays of tables]]`` (a dict
    inside a list is written inline)."""
    lines = [
        f"{_key(k)} = {_value(v)}"
        for k, v in doc.items()
        if not isinstance(v, Mapping) and not _is_table_array(v)
    ]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in doc.items():
        name = f"{prefix}{_key(k)}"
        if isinstance(v, Mapping):
            out += f"\n[{name}]\n" + toml_dumps(v, name + ".")
        elif _is_table_array(v):
            for item in v:
                out += f"\n[[{name}]]\n" + toml_dumps(item, name + ".")
    return out


# --- readings: /proc and /metrics ------------------------------------------------------


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


async def scrape_metrics(host: str, port: int) -> Samples:
    """Every sample on ``http://host:port/metrics``, keyed by name and sorted labels."""
    stream = await trio.open_tcp_stream(host, port)
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


def metric_sum(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, lb), v in samples.items() if n == name and want <= set(lb))


def _metrics_address(config: Mapping[str, Any] | str) -> tuple[str, int] | None:
    if not isinstance(config, Mapping):
        return None
    m = config.get("metrics", {})
    if not m.get("enabled", True) or "port" not in m:
        return None
    return m.get("host", "127.0.0.1"), int(m["port"])


# --- one daemon ------------------------------------------------------------------------


class Daemon:
    def __init__(
        self, program: str, name: str, config: Mapping[str, Any] | str, workdir: Path
    ) -> None:
        if program not in ("relay", "vspc", "agent"):  # an agent never says READY=1: launch()
            raise ValueError(f"no such daemon: {program}")
        self.program = program
        self.name = name
        self.config = config
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / f"{program}.toml"
        self.log_path = self.dir / "output.log"
        self.metrics_address = _metrics_address(config)
        self.proc: trio.Process | None = None
        self.starts = 0
        self.states: list[str] = []  # sd_notify states received, not yet expected
        self._log_from = 0  # where this start's output begins in the log file
        self._notify: trio.socket.SocketType | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def returncode(self) -> int | None:
        """The exit status, None while it runs (or before it started)."""
        return None if self.proc is None else self.proc.returncode

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        """The output of every start, each after a ``--- start N of NAME`` line."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log(self) -> str:
        """The output of the latest start only."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self._log_from)
            return f.read().decode("utf-8", "backslashreplace")

    def log_lines(self) -> list[str]:
        return self.log().splitlines()

    async def wait_log(self, text: str, after: int = 0, timeout: float = 30.0) -> int:
        """Until ``text`` appears in the output past offset ``after``; returns its end."""
        await wait_until(
            lambda: self.log_text().find(text, after) >= 0,
            timeout,
            f"{text!r} in the output",
            interval=0.05,
        )
        return self.log_text().find(text, after) + len(text)

    async def launch(self, *args: str, stdout: int | IO[bytes] | None = subprocess.STDOUT) -> None:
        """Write the TOML and start ``vic PROGRAM --config FILE ARGS`` (not waiting for
        READY=1); stderr goes to the log, stdout too unless told otherwise."""
        if self.running:
            raise RuntimeError(f"{self.name} is running")
        self.config_path.write_text(
            self.config if isinstance(self.config, str) else toml_dumps(self.config)
        )
        notify_path = self.dir / "notify"
        notify_path.unlink(missing_ok=True)
        self._close_notify()
        self._notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await self._notify.bind(str(notify_path))
        self.states = []
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        env.pop("WATCHDOG_USEC", None)
        self.starts += 1
        with self.log_path.open("ab") as out:
            out.write(f"--- start {self.starts} of {self.name}\n".encode())
            out.flush()
            self._log_from = out.tell()
            self.proc = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "vic.cli",
                    self.program,
                    "--config",
                    str(self.config_path),
                    *args,
                ],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out if stdout == subprocess.STDOUT else stdout,
                stderr=out,
            )

    async def start(self) -> None:
        """Write the TOML, start the process and wait until it reports READY=1."""
        await self.launch()
        await self.expect_state("READY=1")

    async def next_state(self) -> list[str]:
        """Until the next sd_notify message: its lines (also added to ``states``)."""
        assert self._notify is not None
        data = await self._notify.recv(4096)
        lines = data.decode(errors="replace").splitlines()
        self.states.extend(lines)
        return lines

    async def message(self, timeout: float = 10.0) -> dict[str, str]:
        """The next sd_notify message, as its KEY=VALUE pairs."""
        with trio.fail_after(timeout):
            lines = await self.next_state()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    async def expect_state(self, state: str, timeout: float = READY_TIMEOUT) -> None:
        """Until the daemon reports ``state`` over sd_notify (fails if it exits first)."""
        with trio.fail_after(timeout):
            while state not in self.states:
                with trio.move_on_after(0.1):
                    await self.next_state()
                    continue
                self._alive(f"before {state}")
        self.states.remove(state)

    def _alive(self, when: str = "") -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise DaemonExited(
                f"{self.name} exited ({self.proc.returncode}) {when}:\n{self.log()[-3000:]}"
            )

    # --- readings of the running daemon

    def fds(self) -> int:
        self._alive()
        return open_fds(self.pid)

    def sockets(self) -> int:
        self._alive()
        return open_sockets(self.pid)

    def rss(self) -> int:
        self._alive()
        return rss_bytes(self.pid)

    async def metrics(self) -> Samples:
        assert self.metrics_address is not None, "metrics disabled in this config"
        return await scrape_metrics(*self.metrics_address)

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        return metric_sum(await self.metrics(), name, **labels)

    # --- signals and exits

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (as kill(1) does: SIGKILL unless told)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def freeze(self) -> None:
        """SIGSTOP: the daemon holds what it has and reads nothing more (its peers
        fill its socket buffers and their own replay buffers) until killed or thawed."""
        self.kill(signal.SIGSTOP)

    def thaw(self) -> None:
        self.kill(signal.SIGCONT)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        with trio.fail_after(timeout):
            code = await self.proc.wait()
        self._close_notify()
        return code

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the daemon drains) and wait for it to exit."""
        self.kill(signal.SIGTERM)
        return await self.wait_exit(timeout)

    async def restart(self, sig: int = signal.SIGKILL) -> None:
        self.kill(sig)
        await self.wait_exit()
        await self.start()

    def cleanup(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
        self._close_notify()

    async def finish(self) -> None:
        """Kill it if it still runs and wait (at most 10 s, even when cancelled)."""
        self.cleanup()
        with trio.move_on_after(10) as cs:
            cs.shield = True
            if self.proc is not None:
                await self.proc.wait()

    def _close_notify(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None


class Daemons:
    """Several daemons of one test; ``async with`` kills any left running."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.all: dict[str, Daemon] = {}

    def add(self, program: str, name: str, config: Mapping[str, Any] | str) -> Daemon:
        d = Daemon(program, name, config, self.workdir)
        self.all[name] = d
        return d

    def __getitem__(self, name: str) -> Daemon:
        return self.all[name]

    async def __aenter__(self) -> Daemons:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is not None:  # shown with the failure (pytest captures it)
            print(self.logs())
        for d in self.all.values():
            d.cleanup()
        for d in self.all.values():
            await d.finish()

    def logs(self) -> str:
        """Every daemon's output, for a failing assertion's message."""
        return "\n".join(f"===== {d.name}\n{d.log_text()[-4000:]}" for d in self.all.values())


@asynccontextmanager
async def run_daemon(
    program: str, workdir: Path, config: Mapping[str, Any] | str, *, name: str | None = None
) -> AsyncIterator[Daemon]:
    """Start ``vic <program> --config`` on ``config`` (a dict or TOML text) and wait
    until it is READY; on exit kill it if it still runs."""
    d = Daemon(program, name or program, config, workdir)
    try:
        await d.start()
        yield d
    finally:
        await d.finish()


# --- a daemon that should refuse to start ---------------------------------------------


@dataclass(frozen=True)
class Exit:
    code: int | None  # None: still running after the deadline (then killed)
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


async def start_expecting_exit(
    program: str,
    workdir: Path,
    config: Mapping[str, Any] | str,
    *,
    check: bool = False,
    timeout: float = 20.0,
) -> Exit:
    """Run ``vic <program> --config`` (``--check`` if asked) and return how it ended.

    A daemon that starts instead of refusing its config is killed once it says
    READY=1 (or after ``timeout``), and reported with ``code=None``."""
    d = Daemon(program, f"{program}-refused", config, workdir)
    await d.launch(*(["--check"] if check else []), stdout=None)  # stderr only
    assert d.proc is not None
    code: int | None = None
    try:
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as race:

                async def exited() -> None:
                    assert d.proc is not None
                    await d.proc.wait()
                    race.cancel_scope.cancel()

                async def became_ready() -> None:
                    while "READY=1" not in d.states:
                        await d.next_state()
                    race.cancel_scope.cancel()

                race.start_soon(exited)
                race.start_soon(became_ready)
        code = d.proc.returncode
    finally:
        await d.finish()
    return Exit(code, d.log())
