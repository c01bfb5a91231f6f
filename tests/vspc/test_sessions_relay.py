"""The whole chain as processes and the agent's tether: the agent's tether connects
to a real `vic relay`'s pipe ingress labelled ``session``, the relay carries the
stream to a real `vic vspc`'s endpoint, and `vic console exec` reaches the process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from common.io.guestinfo.filestore import FileStore
from common.proto.guestinfo.keys import session_secrets_key
from guestagent.backends.file import FileGuestBackend
from guestagent.channels import unix_connector
from guestagent.config import SessionSection
from guestagent.reaper import Reaper
from guestagent.tether import Tether
from tests.support.daemons import run_daemon
from tests.support.vic_cli import REPO, VIC
from tests.vspc.test_vspc_ops import daemon, toml_config
from vspc.guestinfo_watch import FileStoreWatcher

VM = "vm-relayed"


def _vic() -> list[str]:
    return [str(VIC)] if VIC.exists() else [sys.executable, "-m", "vic.cli"]


@pytest.mark.trio
async def test_exec_through_a_real_relay_and_vspc(tmp_path: Path) -> None:
    gi = tmp_path / "gi"
    gi.mkdir()
    endpoint = tmp_path / "endpoint.sock"
    vspc = toml_config(tmp_path) + (
        f'[endpoint]\nunix = "{endpoint}"\n[sessions]\nguestinfo-dir = "{gi}"\n'
    )
    pipe = tmp_path / "vm.sock"
    relay = (
        'log-level = "warning"\n[metrics]\nenabled = false\n'
        f'[egress.default]\nkind = "unix"\npath = "{endpoint}"\n'
        f'[[pipe]]\nname = "s"\nvm = "{VM}"\npath = "{pipe}"\nlabel = "session"\n'
    )
    (tmp_path / "relay").mkdir()
    async with daemon(tmp_path, vspc) as d, trio.open_nursery() as nursery:
        await d.ready()
        async with run_daemon("relay", tmp_path / "relay", relay):
            reaper = Reaper()
            await nursery.start(reaper.run)
            tether = Tether(
                SessionSection(enabled=True, transport="unix"),
                unix_connector(str(pipe)),
                backend=FileGuestBackend(FileStore(gi / f"{VM}.json")),
                reaper=reaper,
            )
            # the agent waits for its secret; the appliance writes it when the
            # first relayed stream names the VM: open one now to get it written
            probe = await trio.open_unix_socket(str(pipe))
            async with FileStoreWatcher(gi).watch(VM) as w:
                with trio.fail_after(30):
                    while session_secrets_key() not in (await w.next()).values:
                        pass
            nursery.start_soon(tether.run)
            cmd = [*_vic(), "console", "exec", "--socket", str(tmp_path / "console.sock"), VM]
            cmd += ["-i", "--", "sh", "-c", "tr a-z A-Z; exit 3"]
            with trio.fail_after(30):
                await tether.secrets.wait_available()
                await probe.aclose()
                r = await trio.run_process(
                    cmd,
                    stdin=b"relayed",
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    cwd=REPO,
                )
            assert (r.returncode, r.stdout) == (3, b"RELAYED"), r
            nursery.cancel_scope.cancel()
