"""What ``vic lab up`` does for a tethered VM that the separate appliance process
(``vic vspc``) cannot be asked for directly: get its session secret written, and wait
until ``vic console exec`` reaches the VM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

from common.proto.guestinfo.keys import session_secrets_key
from vic.lab.polling import wait_until
from vspc.guestinfo_watch import FileStoreWatcher

ROOT = Path(__file__).resolve().parents[2]


async def secret_written(watcher: FileStoreWatcher, vm: str, ingress: Path) -> None:
    """The appliance writes a VM's secret into its guestinfo when the first relayed
    stream names the VM; the agent waits for the secret before it connects. So open a
    stream on the VM's relay ingress (as the VM would) until the secret is there."""
    probe = await trio.open_unix_socket(str(ingress))
    try:
        async with watcher.watch(vm) as w:
            while session_secrets_key() not in (await w.next()).values:
                pass
    finally:
        await probe.aclose()


async def exec_works(console_sock: Path, vm: str, timeout: float) -> None:
    """``vic console exec VM -- true`` exits 0: the session is up."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "vic.cli", "console", "exec", "--socket", str(console_sock)]

    async def ok() -> bool:
        with trio.move_on_after(timeout):
            r = await trio.run_process(
                [*cmd, vm, "--", "true"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
                cwd=ROOT,
                env=env,
            )
            return r.returncode == 0
        return False

    await wait_until(ok, timeout, what=f"vic console exec {vm} -- true", interval=0.2)
