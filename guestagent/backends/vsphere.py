"""The guest's simulated hypervisor channel over the vSphere API (``common.io.vsphere``).

Against govmomi's vCenter simulator this is plain HTTP; every pyVmomi call runs
in the connection's worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import trio

from common.io.guestinfo.base import BackendError, GuestBackend
from common.io.vsphere import VSphereConn, VSphereError, VSphereTarget, is_connection_error
from common.proto import guestinfo as gi

T = TypeVar("T")


class VSphereGuestBackend(GuestBackend):
    """The simulated hypervisor channel: the guest's writes land in the VM's
    ``config.extraConfig`` through the vSphere API (what ESX would do for
    ``info-set``)."""

    def __init__(
        self, url: str, vm: str, ledger: gi.SizeLedger | None = None, poll_interval: float = 0.25
    ) -> None:
        super().__init__(ledger)
        self.conn = VSphereConn(VSphereTarget.from_url(url))
        self.vm_ident = vm
        self.poll_interval = poll_interval

    async def _with_vm(self, fn: Callable[[Any], T]) -> T:
        def go() -> T:
            return fn(self.conn.find_vm(self.vm_ident))

        try:
            return await self.conn.call(go)
        except VSphereError as e:
            raise BackendError(str(e)) from e
        except Exception as e:
            if is_connection_error(e):
                self.conn.reset()  # reconnect on the next call
                raise BackendError(f"vSphere: {e}") from e
            raise

    async def snapshot(self) -> dict[str, str]:
        return await self._with_vm(self.conn.extra_config)

    async def get(self, key: str) -> str | None:
        return (await self.snapshot()).get(key)

    async def get_many(self, keys: Iterable[str]) -> dict[str, str | None]:
        snap = await self.snapshot()
        self.ledger.sizes = {k: gi.entry_size(k, v) for k, v in snap.items()}
        return {k: snap.get(k) for k in keys}

    async def _set_many(self, updates: Mapping[str, str]) -> None:
        await self._with_vm(lambda vm: self.conn.reconfigure(vm, dict(updates)))

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self.conn.disconnect)
