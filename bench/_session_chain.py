"""The chain bench/session_exec.py measures, as real processes: `vic vspc` with
sessions, `vic relay` with two pipe ingresses into its endpoint (one labelled
``session`` for the tether, one raw console ``serial0``), the agent's tether in a
process of its own (``_session_tether.py``) and a socat relay between the same ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.proto.guestinfo import keys as gik
from tests.support.daemons import Daemon, run_daemon
from vspc.guestinfo_watch import FileStoreWatcher

BENCH = Path(__file__).resolve().parent
VM = "vm-sess"  # the tethered VM
RAW = "vm-raw"  # the VM whose raw console is relayed


@dataclass
class Chain:
    tmp: Path
    vspc: Daemon
    relay: Daemon
    tether: trio.Process

    @property
    def console(self) -> str:
        return str(self.tmp / "console.sock")

    @property
    def raw_log(self) -> Path:
        return self.tmp / "logs" / f"{RAW}_serial0.log"

    @property
    def raw_pipe(self) -> str:
        return str(self.tmp / "raw.sock")

    def pids(self) -> dict[str, int]:
        return {"tether": self.tether.pid, "relay": self.relay.pid, "appliance": self.vspc.pid}


def vspc_config(tmp: Path) -> str:
    return (
        'log-level = "warning"\n[listen]\nhost = "127.0.0.1"\nport = 0\n'
        f'[console]\nsocket = "{tmp / "console.sock"}"\nlog-dir = "{tmp / "logs"}"\n'
        "log-max-bytes = 4294967296\n"
        "[metrics]\nenabled = false\n"
        f'[endpoint]\nunix = "{tmp / "endpoint.sock"}"\n'
        f'[sessions]\nlogs-dir = "{tmp / "clogs"}"\nguestinfo-dir = "{tmp / "gi"}"\n'
    )


def relay_config(tmp: Path) -> str:
    return (
        'log-level = "warning"\n[metrics]\nenabled = false\n'
        f'[egress.default]\nkind = "unix"\npath = "{tmp / "endpoint.sock"}"\n'
        f'[[pipe]]\nname = "s"\nvm = "{VM}"\npath = "{tmp / "vm.sock"}"\nlabel = "session"\n'
        f'[[pipe]]\nname = "r"\nvm = "{RAW}"\npath = "{tmp / "raw.sock"}"\n'
        'label = "serial0"\n'
    )


async def _secret_written(tmp: Path) -> None:
    """Open one stream on the session pipe so the appliance writes the VM's secret."""
    probe = await trio.open_unix_socket(str(tmp / "vm.sock"))
    async with FileStoreWatcher(tmp / "gi").watch(VM) as w:
        with trio.fail_after(30):
            while gik.session_secrets_key() not in (await w.next()).values:
                pass
    await probe.aclose()


@asynccontextmanager
async def chain(tmp: Path) -> AsyncIterator[Chain]:
    (tmp / "gi").mkdir()
    async with run_daemon("vspc", tmp, vspc_config(tmp)) as vspc:
        (tmp / "relay").mkdir()
        async with run_daemon("relay", tmp / "relay", relay_config(tmp)) as relay:
            await _secret_written(tmp)
            cmd = [sys.executable, str(BENCH / "_session_tether.py"), str(tmp / "vm.sock")]
            cmd.append(str(tmp / "gi" / f"{VM}.json"))
            tether = await trio.lowlevel.open_process(cmd)
            try:
                yield Chain(tmp, vspc, relay, tether)
            finally:
                tether.kill()
                await tether.wait()


def vic() -> list[str]:
    exe = BENCH.parent / ".venv" / "bin" / "vic"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "vic.cli"]


async def exec_ready(c: Chain) -> None:
    """Until `vic console exec VM -- true` works: the tether's session is up."""
    with trio.fail_after(60):
        while True:
            r = await trio.run_process(
                [*vic(), "console", "exec", "--socket", c.console, VM, "--", "true"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            if r.returncode == 0:
                return
            await trio.sleep(0.2)


def raw_writer(c: Chain) -> socket.socket:
    """The raw console's guest end: a connection to the relay's raw pipe."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(c.raw_pipe)
    return s


def start_socat(tmp: Path, sink: str) -> tuple[subprocess.Popen[bytes], str]:
    """A socat relay from a Unix listener to ``sink``: (process, its listening path)."""
    path = str(tmp / "socat.sock")
    p = subprocess.Popen(["socat", "-b", "262144", f"UNIX-LISTEN:{path}", f"UNIX-CONNECT:{sink}"])
    deadline = time.monotonic() + 10
    while not os.path.exists(path):  # a bench harness: polling is fine
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("socat did not listen")
        time.sleep(0.005)
    return p, path


def unlink(*paths: str) -> None:
    for path in paths:
        if os.path.exists(path):
            os.unlink(path)
