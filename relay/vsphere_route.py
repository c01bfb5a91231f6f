"""Follow the appliance VM through vSphere: re-route when its ``runtime.host`` changes.

Where relays can reach vCenter, the route to the appliance follows vSphere
itself rather than a membership protocol of ours: a property collector filter
on the appliance VM's ``runtime.host``, polled with ``WaitForUpdatesEx``; when
the VM moves (vMotion, HA restart) the new host's name is looked up in the
configured ``host -> Route`` map and ``Router.set_route`` moves every live
stream to the relay on that host, where they resume.

pyVmomi blocks, so each vSphere call runs in a worker thread; waits are bounded
(``max_wait`` seconds) so cancellation is prompt. A lost vCenter connection is
retried with backoff and never disturbs the current route.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from relay.core.identity import uuid_key
from relay.route import Route, Router

log = logging.getLogger("relay.vsphere_route")


@dataclass(frozen=True)
class VCenter:
    host: str
    port: int = 443
    user: str = ""
    password: str = ""
    protocol: str = "https"  # "http" for govmomi's simulator
    path: str = "/sdk"
    verify_tls: bool = True


def _pyvmomi() -> tuple[Any, Any, Any]:
    """(pyVim.connect, vim, vmodl), typed loosely: pyVmomi has no type hints."""
    connect: Any = importlib.import_module("pyVim.connect")
    pyvmomi: Any = importlib.import_module("pyVmomi")
    return connect, pyvmomi.vim, pyvmomi.vmodl


class HostWatch:
    """Blocking watcher of one VM's ``runtime.host`` (call its methods from a thread)."""

    def __init__(self, vc: VCenter, vm: str, max_wait: int = 10) -> None:
        self.vc = vc
        self.vm_ident = vm
        self.max_wait = max_wait
        self.si: Any = None
        self.pc: Any = None
        self.token = ""
        self.host: str | None = None

    def connect(self) -> None:
        connect, vim, vmodl = _pyvmomi()
        kw: dict[str, Any] = {}
        if self.vc.protocol == "https" and not self.vc.verify_tls:
            kw["disableSslCertValidation"] = True
        self.si = connect.SmartConnect(host=self.vc.host, port=self.vc.port, user=self.vc.user,
                               pwd=self.vc.password, protocol=self.vc.protocol, path=self.vc.path,
                               connectionPoolTimeout=-1, **kw)
        vm = self._find_vm(vim)
        pc = self.si.content.propertyCollector.CreatePropertyCollector()
        PC = vmodl.query.PropertyCollector
        pc.CreateFilter(PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=vm, skip=False)],
            propSet=[PC.PropertySpec(type=vim.VirtualMachine, all=False, pathSet=["runtime.host"])],
        ), partialUpdates=False)
        self.pc = pc
        self.token = ""

    def _find_vm(self, vim: Any) -> Any:
        content = self.si.RetrieveContent()
        want = uuid_key(self.vm_ident)  # a name is compared exactly, never folded
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            for vm in view.view:
                cfg = vm.config
                ids = {uuid_key(getattr(cfg, "uuid", "") or ""),
                       uuid_key(getattr(cfg, "instanceUuid", "") or "")}
                if vm.name == self.vm_ident or (want is not None and want in ids):
                    return vm
        finally:
            view.Destroy()
        raise LookupError(f"appliance VM {self.vm_ident!r} not found in vCenter")

    def wait(self) -> str | None:
        """One WaitForUpdatesEx round; the VM's host name if it was reported."""
        _, _, vmodl = _pyvmomi()
        if self.pc is None:
            self.connect()
        opts = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=self.max_wait)
        res = self.pc.WaitForUpdatesEx(self.token, opts)
        if res is None:
            return None
        self.token = res.version
        for fs in res.filterSet or []:
            for obj in fs.objectSet or []:
                for ch in obj.changeSet or []:
                    if ch.name == "runtime.host" and ch.val is not None:
                        self.host = str(ch.val.name)
        return self.host

    def close(self) -> None:
        if self.pc is not None:
            with contextlib.suppress(Exception):
                self.pc.DestroyPropertyCollector()
            self.pc = None
        if self.si is not None:
            with contextlib.suppress(Exception):
                _pyvmomi()[0].Disconnect(self.si)
            self.si = None


async def follow_appliance(
    router: Router,
    vc: VCenter,
    vm: str,
    routes: Mapping[str, Route],
    *,
    max_wait: int = 10,
    backoff: tuple[float, float] = (0.5, 30.0),
    on_change: Callable[[str, Route], None] | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep ``router`` pointed at the relay on the host that runs ``vm``. Runs until cancelled.

    ``routes`` maps ESX host names (``HostSystem.name``) to the route for that host.
    ``task_status.started()`` fires after the first answer from vCenter.
    """
    watch = HostWatch(vc, vm, max_wait)
    delay = backoff[0]
    started = False
    current: str | None = None
    try:
        while True:
            try:
                host = await trio.to_thread.run_sync(watch.wait, abandon_on_cancel=True)
            except Exception as e:
                log.warning("vSphere watch of %s: %s; retrying in %.1fs", vm, e, delay)
                await trio.to_thread.run_sync(watch.close, abandon_on_cancel=True)
                await trio.sleep(delay)
                delay = min(delay * 2, backoff[1])
                continue
            delay = backoff[0]
            if host is not None and host != current:
                current = host
                route = routes.get(host)
                if route is None:
                    log.warning("appliance %s is on host %s, which has no configured route; "
                                "keeping %s", vm, host, router.route.address)
                elif route != router.route:
                    log.info("appliance %s moved to host %s: route -> %s", vm, host, route.address)
                    router.set_route(route)
                    if on_change is not None:
                        on_change(host, route)
            if not started:
                started = True
                task_status.started(current)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await trio.to_thread.run_sync(watch.close, abandon_on_cancel=True)
