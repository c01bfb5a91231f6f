"""Real daemons for fault and hostile suites: `vic relay` / `vic vspc` processes
started from TOML files written from dicts, ready when they say READY=1 over
sd_notify, killed (SIGKILL) or stopped (SIGTERM) and started again with the same
config, their output kept in one log file per daemon across restarts.

    d = Daemon("relay", "esx-b", {...config dict...}, tmp_path)
    await d.start()
    d.freeze()               # SIGSTOP: it holds bytes it has not passed on
    d.kill()                 # SIGKILL: no drain, no goodbye
    await d.wait_exit()
    await d.start()          # same config, same addresses
    await d.stop()           # SIGTERM, then wait (drain)

``Daemons`` keeps several and kills whatever still runs at the end of a test.
Every "host" gets its own loopback address (127.0.0.2, 127.0.0.3, ...), so a
port number never collides across hosts and each daemon's traffic is its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from vic.lab.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0

Table = dict[str, Any]


def free_port(host: str) -> int:
    """A TCP port free on ``host`` now (the daemon binds it again, with SO_REUSEADDR)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def _key(k: str) -> str:
    return k if k.replace("-", "").replace("_", "").isalnum() else _value(k)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def toml_dumps(doc: Table, prefix: str = "") -> str:
    """Plain values first, then ``[tables]`` and ``[[arrays of tables]]`` (a dict
    inside a list is written inline)."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not _is_table_array(v)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in doc.items():
        name = f"{prefix}{_key(k)}"
        if isinstance(v, dict):
            out += f"\n[{name}]\n" + toml_dumps(v, name + ".")
        elif _is_table_array(v):
            for item in v:
                out += f"\n[[{name}]]\n" + toml_dumps(item, name + ".")
    return out


# --- one daemon ------------------------------------------------------------------------

class Daemon:
    def __init__(self, program: str, name: str, config: Table, workdir: Path) -> None:
        if program not in ("relay", "vspc"):
            raise ValueError(f"no such daemon: {program}")
        self.program = program
        self.name = name
        self.config = config
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / f"{program}.toml"
        self.log_path = self.dir / "output.log"
        self.proc: trio.Process | None = None
        self.starts = 0
        self._notify: trio.socket.SocketType | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_log(self, text: str, after: int = 0, timeout: float = 30.0) -> int:
        """Until ``text`` appears in the output past offset ``after``; returns its end."""
        await wait_until(lambda: self.log_text().find(text, after) >= 0, timeout,
                         what=f"{text!r} in the output of {self.name}", interval=0.05)
        return self.log_text().find(text, after) + len(text)

    async def start(self) -> None:
        """Write the TOML, start the process and wait until it reports READY=1."""
        if self.running:
            raise RuntimeError(f"{self.name} is running")
        self.config_path.write_text(toml_dumps(self.config))
        notify_path = self.dir / "notify"
        notify_path.unlink(missing_ok=True)
        self._notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await self._notify.bind(str(notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        self.starts += 1
        with self.log_path.open("ab") as out:
            out.write(f"--- start {self.starts} of {self.name}\n".encode())
            out.flush()
            self.proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "vic.cli", self.program, "--config", str(self.config_path)],
                env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        await self.expect("READY=1")

    async def expect(self, state: str, timeout: float = READY_TIMEOUT) -> None:
        """Until the daemon reports ``state`` over sd_notify (fails if it exits first)."""
        assert self._notify is not None and self.proc is not None
        with trio.fail_after(timeout):
            while True:
                with trio.move_on_after(0.2):
                    msg = await self._notify.recv(4096)
                    if state in msg.decode(errors="replace").splitlines():
                        return
                    continue
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before "
                                       f"{state}:\n{self.log_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
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
        if self._notify is not None:
            self._notify.close()
            self._notify = None
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
        if self._notify is not None:
            self._notify.close()
            self._notify = None


class Daemons:
    """Several daemons of one test; ``async with`` kills any left running."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.all: dict[str, Daemon] = {}

    def add(self, program: str, name: str, config: Table) -> Daemon:
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
        with trio.move_on_after(10) as cs:
            cs.shield = True
            for d in self.all.values():
                if d.proc is not None:
                    await d.proc.wait()

    def logs(self) -> str:
        """Every daemon's output, for a failing assertion's message."""
        return "\n".join(f"===== {d.name}\n{d.log_text()[-4000:]}" for d in self.all.values())
