"""The appliance's guestinfo from the vSphere API (pyVmomi), for ``vspc.guestinfo_watch``.

A private PropertyCollector per watched VM, ``WaitForUpdatesEx`` on
``config.extraConfig`` and ``runtime.powerState``; on any API/connection error
it reconnects with backoff and starts again from a full state.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import trio

from common.io.guestinfo.base import BackendError
from common.io.guestinfo.filestore import POWERED_OFF, POWERED_ON
from common.io.vsphere import PropertyWatch, VSphereConn, VSphereTarget, pyvmomi_module
from common.ops.wiretext import wire
from vspc.guestinfo_watch import GuestinfoWatcher, VMState, VMWatch

log = logging.getLogger("vspc.guestinfo_watch")

# govmomi's simulator (0.24, Debian's) changes extraConfig without announcing it;
# every ReconfigVM does announce config.hardware.device, so that change makes the
# watcher re-read extraConfig. Against vCenter this costs nothing extra: devices
# rarely change, and extraConfig changes are announced as such.
_DEVICES = "config.hardware.device"
_EC_ITEM = re.compile(r'^config\.extraConfig\["(.*)"\]$')


class _VSphereWatch(VMWatch):
    def __init__(
        self,
        target: VSphereTarget,
        vm: str,
        max_wait: int,
        backoff: tuple[float, float],
    ) -> None:
        self.conn = VSphereConn(target)
        self.vm_ident = vm
        self.backoff = backoff
        self.props = PropertyWatch(
            self.conn, vm, ["config.extraConfig", "runtime.powerState", _DEVICES], max_wait
        )
        self._refetch = False
        self.values: dict[str, str] = {}
        self.power = POWERED_ON
        self.version = 0
        self.reconnects = 0

    # blocking, in the connection's thread
    def _wait(self) -> bool:
        """One WaitForUpdatesEx round; True if anything changed."""
        if not self.props.ready:
            self.props.setup()
            self.values = {}
        changes = self.props.wait()
        if not changes:
            return False
        for name, op, val in changes:
            self._apply(name, op, val)
        if self._refetch:
            self._refetch = False
            self.values = self.conn.extra_config(self.props.vm)
        return True

    def _apply(self, name: str, op: str, val: Any) -> None:
        if name == "runtime.powerState":
            self.power = str(val)
        elif name == _DEVICES:
            self._refetch = True
        elif name == "config.extraConfig":
            self.values = {o.key: str(o.value) for o in (val or [])}
        else:
            m = _EC_ITEM.match(name)
            if m is None:
                return
            if op == "remove" or val is None:
                self.values.pop(m.group(1), None)
            else:
                self.values[m.group(1)] = str(getattr(val, "value", val))

    async def next(self) -> VMState:
        delay = self.backoff[0]
        while True:
            first = not self.props.ready
            try:
                changed = await self.conn.call(self._wait)
            except Exception as e:
                if isinstance(e, trio.Cancelled):  # pragma: no cover - not raised in threads
                    raise
                log.warning(
                    "guestinfo watch %s: %s; reconnecting", wire(self.vm_ident), wire(str(e))
                )
                await trio.to_thread.run_sync(self.props.close, abandon_on_cancel=True)
                self.reconnects += 1
                await trio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            delay = self.backoff[0]
            if changed or first:
                self.version += 1
                return VMState(values=dict(self.values), power=self.power, version=self.version)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await trio.to_thread.run_sync(self.props.close, abandon_on_cancel=True)


class VSphereWatcher(GuestinfoWatcher):
    """``url`` like ``http://user:pass@127.0.0.1:8989/sdk`` (vcsim) or https for vCenter."""

    def __init__(
        self,
        url: str | VSphereTarget,
        *,
        max_wait: int = 1,
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self.target = url if isinstance(url, VSphereTarget) else VSphereTarget.from_url(url)
        self.max_wait = max_wait
        self.backoff = backoff
        self._writer = VSphereConn(self.target)

    def watch(self, vm: str) -> VMWatch:
        return _VSphereWatch(self.target, vm, self.max_wait, self.backoff)

    async def write(self, vm: str, updates: Mapping[str, str | None]) -> None:
        def go() -> None:
            self._writer.reconfigure(self._writer.find_vm(vm), updates)

        try:
            await self._writer.call(go)
        except Exception as e:
            self._writer.reset()
            raise BackendError(f"vSphere write to {vm}: {e}") from e

    async def set_power(self, vm: str, power: str) -> None:
        pyvim_task = pyvmomi_module("pyVim.task")

        def go() -> None:
            obj = self._writer.find_vm(vm)
            task = obj.PowerOffVM_Task() if power == POWERED_OFF else obj.PowerOnVM_Task()
            pyvim_task.WaitForTask(task, si=self._writer.si)

        await self._writer.call(go)

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._writer.disconnect)
