"""What the lab's tethered-VM scenarios share: a check's row, ``vic console`` as a
person runs it, and a tethered agent's config."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from vic.lab.agent_processes import STEP_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SessionCheck:
    what: str
    seen: str
    ok: bool
    vm: str = ""  # "" = the scenario's VM


def agent_toml(d: Path, vm: str, console: Path, guestinfo: Path | None = None) -> Path:
    """``d/<vm>.toml``: a tethered ``vic agent`` ([session] on) whose console is the Unix
    socket ``console``; its guestinfo is the file store ``guestinfo`` (default
    ``d/guestinfo``), where the appliance writes the session secret."""
    conf = d / f"{vm}.toml"
    conf.write_text(
        "[guestinfo]\n"
        'backend = "file"\n'
        f'path = "{(guestinfo or d / "guestinfo") / vm}.json"\n'
        "[console]\n"
        f'transport = "unix"\npath = "{console}"\nbackoff-max = 0.2\n'
        "[session]\n"
        "enabled = true\nbackoff-max = 0.2\n"
        "[agent]\n"
        "subreaper = true\n"
    )
    return conf


def vic_cmd(workdir: Path, verb: str, *args: str) -> list[str]:
    sock = str(workdir / "console.sock")
    return [sys.executable, "-m", "vic.cli", "console", verb, "--socket", sock, *args]


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), out.get("PYTHONPATH", "")) if p)
    return out


async def vic(
    workdir: Path, verb: str, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """``vic console VERB ARGS`` against the lab appliance in ``workdir``."""
    with trio.fail_after(STEP_TIMEOUT):
        return await trio.run_process(
            vic_cmd(workdir, verb, *args),
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
            env=env(),
        )


async def read_until(stream: trio.abc.ReceiveStream, buf: bytearray, want: bytes) -> None:
    while want not in buf:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError(f"exec output ended at {len(buf)} bytes")
        buf += data
