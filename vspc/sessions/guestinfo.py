"""Where the session service writes each VM's secrets: the guestinfo ``[sessions]``
names (``guestinfo = "file"`` or ``"vsphere"``).

With ``"vsphere"`` the secrets go to the VM's ``config.extraConfig`` by ReconfigVM
(``vspc.guestinfo_vsphere``), where the guest reads them as guestinfo and cannot
change them; the value never appears in a log line or an error (``scrubbed``).
"""

from __future__ import annotations

import trio

from common.io.guestinfo.base import BackendError
from common.io.guestinfo.filestore import POWERED_ON
from vspc.config import SessionsConfig
from vspc.guestinfo_vsphere import VSphereWatcher
from vspc.guestinfo_watch import FileStoreWatcher, GuestinfoWatcher, VMState

CLOSE_WAIT = 5.0


class VSphereSecrets(VSphereWatcher):
    """The vSphere guestinfo for the session service: ``write`` as the watcher's
    (ReconfigVM), ``state`` as one read that fails at once when vCenter does (the
    watcher's would retry for ever, holding the VM's first connection meanwhile)."""

    async def state(self, vm: str) -> VMState:
        conn = self._writer

        def go() -> dict[str, str]:
            return conn.extra_config(conn.find_vm(vm))

        try:
            values = await conn.call(go)
        except Exception as e:
            conn.reset()
            raise BackendError(f"vSphere read of {vm}: {e}") from e
        return VMState(values=values, power=POWERED_ON, version=1)

    async def aclose(self) -> None:
        """Log out, for at most ``CLOSE_WAIT`` seconds (a vCenter gone quiet)."""
        with trio.move_on_after(CLOSE_WAIT):
            await trio.to_thread.run_sync(self._writer.disconnect, abandon_on_cancel=True)


def guestinfo_store(config: SessionsConfig) -> GuestinfoWatcher | None:
    """The store ``config`` names; None: no store (the secret is kept here only)."""
    if config.guestinfo == "vsphere":
        assert config.vsphere is not None  # validated
        return VSphereSecrets(config.vsphere.target())
    return None if config.guestinfo_dir is None else FileStoreWatcher(config.guestinfo_dir)


def scrubbed(text: str, value: str) -> str:
    """``text`` (an error's) with the secrets' value, should it hold it, masked."""
    return text.replace(value, "<secrets>") if value else text
