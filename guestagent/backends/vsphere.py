"""vSphere API access (pyVmomi) shared by the guest's simulated channel and the appliance watcher.

Against govmomi's vCenter simulator this is plain HTTP
(``SmartConnect(..., protocol="http")``). All pyVmomi calls block, so they run in
worker threads, one at a time per connection.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import trio

from guestagent.backends.base import BackendError, GuestBackend
from guestagent.core import guestinfo as gi

T = TypeVar("T")


def pyvmomi_module(name: str) -> Any:
    """pyVmomi is untyped: import its modules as Any."""
    return importlib.import_module(name)


@dataclass(frozen=True)
class VSphereTarget:
    host: str
    port: int
    user: str
    password: str
    protocol: str  # "http" or "https"
    path: str = "/sdk"
    verify_tls: bool = False  # check vCenter's certificate (system CAs) over https

    @classmethod
    def from_url(cls, url: str) -> VSphereTarget:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) vSphere URL: {url!r}")
        return cls(
            host=u.hostname,
            port=u.port or (443 if u.scheme == "https" else 80),
            user=unquote(u.username or ""),
            password=unquote(u.password or ""),
            protocol=u.scheme,
            path=u.path or "/sdk",
        )


class VSphereConn:
    """A pyVmomi service instance plus helpers; blocking methods, call via ``call``."""

    def __init__(self, target: VSphereTarget) -> None:
        self.target = target
        self.si: Any = None
        self._lock = threading.Lock()
        self._vm_cache: dict[str, Any] = {}

    # blocking ------------------------------------------------------------------------
    def connect(self) -> None:
        SmartConnect = pyvmomi_module("pyVim.connect").SmartConnect
        t = self.target
        kwargs: dict[str, Any] = {}
        if t.protocol == "https" and not t.verify_tls:
            kwargs["disableSslCertValidation"] = True
        try:
            self.si = SmartConnect(
                host=t.host,
                port=t.port,
                user=t.user,
                pwd=t.password,
                protocol=t.protocol,
                path=t.path,
                connectionPoolTimeout=-1,
                **kwargs,
            )
        except Exception as e:
            raise BackendError(f"vSphere connect {t.host}:{t.port}: {e}") from e
        self._vm_cache.clear()

    def disconnect(self) -> None:
        if self.si is not None:
            Disconnect = pyvmomi_module("pyVim.connect").Disconnect
            with contextlib.suppress(Exception):
                Disconnect(self.si)
            self.si = None

    def find_vm(self, ident: str) -> Any:
        """By name, or by config.uuid / instanceUuid (any form)."""
        vim = pyvmomi_module("pyVmomi").vim
        if ident in self._vm_cache:
            return self._vm_cache[ident]
        content = self.si.RetrieveContent()
        canon = ident.replace("-", "").replace(" ", "").lower()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        try:
            for vm in view.view:
                cfg = vm.config
                uuids = {
                    (getattr(cfg, "uuid", "") or "").replace("-", "").lower(),
                    (getattr(cfg, "instanceUuid", "") or "").replace("-", "").lower(),
                }
                if vm.name == ident or canon in uuids:
                    self._vm_cache[ident] = vm
                    return vm
        finally:
            view.Destroy()
        raise BackendError(f"no VM named {ident!r}")

    def extra_config(self, vm: Any) -> dict[str, str]:
        return {o.key: str(o.value) for o in (vm.config.extraConfig or [])}

    def reconfigure(self, vm: Any, updates: Mapping[str, str | None]) -> None:
        WaitForTask = pyvmomi_module("pyVim.task").WaitForTask
        vim = pyvmomi_module("pyVmomi").vim

        spec = vim.vm.ConfigSpec(
            extraConfig=[
                vim.option.OptionValue(key=k, value="" if v is None else v)
                for k, v in updates.items()
            ]
        )
        WaitForTask(vm.ReconfigVM_Task(spec), si=self.si)

    def power(self, vm: Any) -> str:
        return str(vm.runtime.powerState)

    # async ---------------------------------------------------------------------------
    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self.si is None:
                self.connect()
            return fn(*args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(
            functools.partial(self._locked, fn, *args), abandon_on_cancel=True
        )


def _is_connection_error(e: BaseException) -> bool:
    return isinstance(e, (OSError, ConnectionError, BackendError)) or type(e).__name__ in (
        "NotAuthenticated",
        "HTTPException",
        "RemoteDisconnected",
    )


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
        except BackendError:
            raise
        except Exception as e:
            if _is_connection_error(e):
                self.conn.si = None  # reconnect on the next call
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
