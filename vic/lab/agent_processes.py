"""The processes of lab scenario 3: the agents (``vic agent``) and socat's null modem."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from vic.lab.agent_plans import VMPlan

ROOT = Path(__file__).resolve().parents[2]
HVSOCK_PORT = 1024
STEP_TIMEOUT = 40.0  # per wait (agent start-up, started, status) on a loaded machine


def agent_toml(d: Path, plan: VMPlan, serial_dev: Path | None) -> Path:
    if plan.channel == "serial":
        assert serial_dev is not None
        console = f'transport = "serial"\npath = "{serial_dev}"\n'
    else:
        console = f'transport = "hybrid"\npath = "{d / plan.vm}.vsock"\nport = {HVSOCK_PORT}\n'
    names = f'names = {{ {plan.iface} = "public" }}\n' if plan.iface else ""
    conf = d / f"{plan.vm}.toml"
    conf.write_text(
        "[guestinfo]\n"
        'backend = "file"\n'
        f'path = "{d / "guestinfo" / plan.vm}.json"\n'
        "[console]\n" + console + "backoff-max = 0.5\n"
        "[network]\n"
        "publish = true\n" + names + "[agent]\n"
        "subreaper = true\n"
    )
    return conf


async def start_agent(conf: Path, ns: str = "") -> trio.Process:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "vic.cli", "agent", "--config", str(conf)]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]  # exec's: the pid is the agent's
    log = os.open(conf.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return await trio.lowlevel.open_process(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
        )
    finally:
        os.close(log)


async def stop(proc: trio.Process | None, sig: int = signal.SIGKILL) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    with trio.CancelScope(shield=True):
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(5):
                await proc.wait()


def log_tail(conf: Path, n: int = 3) -> list[str]:
    try:
        text = conf.with_suffix(".log").read_text(errors="replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()][-n:]


async def null_modem(d: Path) -> tuple[trio.Process, Path, Path]:
    """A pty pair joined by socat: (process, guest end, host end)."""
    guest, host = d / "vm-agent-2.ttyS0", d / "esx-c.ttyS0"
    proc = await trio.lowlevel.open_process(
        ["socat", f"pty,raw,echo=0,link={guest}", f"pty,raw,echo=0,link={host}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with trio.fail_after(10):
        while not (guest.exists() and host.exists()):
            if proc.returncode is not None or proc.poll() is not None:
                raise OSError(f"socat exited with {proc.returncode}")
            await trio.sleep(0.02)
    return proc, guest, host
