"""What lab scenario ``docker``'s checks share: its VMs and their main processes, and
the ``docker`` client as a person runs it against the lab appliance."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import trio

from common.io.guestinfo.filestore import FileStore
from common.proto import guestinfo as gi
from vic.lab.agent_processes import STEP_TIMEOUT
from vic.lab.session_checks import env
from vspc.service import VspcService
from vspc.sessions.api import SessionsApi

V1, TTY, EXIT = "vm-dock-1", "vm-dock-tty", "vm-dock-exit"


def mains(d: Path) -> dict[str, gi.SessionConfig]:
    more = f'while [ ! -e "{d / "more"}" ]; do sleep 0.02; done'
    v1 = f"echo one; echo two; echo three; {more}; echo four; echo five >&2; echo six"
    exit21 = 'echo ready; read x; echo "got $x"; echo bye >&2; exit 21'

    def cfg(vm: str, script: str, tty: bool = False) -> gi.SessionConfig:
        args = ("sh", "-c", script)
        return gi.SessionConfig(
            id=f"lab-{vm}", path="/bin/sh", args=args, tty=tty, openstdin=tty or vm == EXIT
        )

    return {
        V1: cfg(V1, v1 + "; exec sleep 100000"),
        TTY: cfg(TTY, "trap '' TERM; exec cat", tty=True),
        EXIT: cfg(EXIT, exit21),
    }


@dataclass
class Docker:
    """The ``docker`` client as a person runs it against the lab appliance."""

    binary: str
    sock: Path
    config_dir: Path
    service: VspcService
    guestinfo: Path  # the file guestinfo store the agents publish to

    def published_ip(self, vm: str) -> str:
        """The first IPv4 address ``vm``'s agent published (docker's IPAddress), or ""."""
        values = FileStore(self.guestinfo / f"{vm}.json").read().values
        nets = gi.view_networks(values)
        return next((str(a) for addrs in nets.values() for a in addrs if a.version == 4), "")

    def env(self) -> dict[str, str]:
        return env() | {
            "DOCKER_HOST": f"unix://{self.sock}",
            "DOCKER_CONFIG": str(self.config_dir),
            "NO_COLOR": "1",
        }

    async def run(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(STEP_TIMEOUT):
            return await trio.run_process(
                [self.binary, *args],
                stdin=stdin,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=self.env(),
            )

    async def open(self, *args: str) -> trio.Process:
        return await trio.lowlevel.open_process(
            [self.binary, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env(),
        )

    async def logged(self, vm: str, want: bytes) -> None:
        """Until the appliance's container log of ``vm`` holds ``want`` (followed; a
        log that ends first, as one does before the VM's session is up, is followed
        again a moment later)."""
        assert self.service.sessions is not None
        with trio.fail_after(STEP_TIMEOUT):
            while True:
                seen = bytearray()
                chunks = SessionsApi(self.service.sessions).logs(vm, follow=True)
                async with aclosing(chunks) as gen:
                    async for chunk in gen:
                        seen += chunk
                        if want in seen:
                            return
                await trio.sleep(0.05)


def seen_of(r: subprocess.CompletedProcess[bytes]) -> str:
    return f"exit {r.returncode}, stdout {r.stdout!r}, stderr {r.stderr!r}"


def parse_inspect(r: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    (c,) = json.loads(r.stdout)
    assert isinstance(c, dict)
    return c


def now() -> str:
    """Docker's ``--since``/``--until`` spelling of the time now: seconds.nanoseconds."""
    return f"{time.time():.9f}"
