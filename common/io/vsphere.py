"""The one vSphere API client (pyVmomi) of the relay, the appliance and the guest agent.

``VSphereTarget`` says where vCenter is (http for govmomi's simulator, https
otherwise); ``VSphereConn`` holds one session. pyVmomi blocks, so its calls run
in a worker thread through ``VSphereConn.call``, one at a time per connection;
a call connects first if there is no session, and a connection error drops the
session so the next call logs in again. ``PropertyWatch`` follows some
properties of one VM with ``WaitForUpdatesEx`` on that connection.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import trio

T = TypeVar("T")


class VSphereError(Exception):
    """vCenter could not be reached or logged into, or a VM is not there."""


def pyvmomi_module(name: str) -> Any:
    """pyVmomi is untyped: import its modules as Any."""
    return importlib.import_module(name)


@dataclass(frozen=True)
class VSphereTarget:
    host: str
    port: int = 443
    user: str = ""
    password: str = ""
    protocol: str = "https"  # "http" for govmomi's simulator
    path: str = "/sdk"
    verify_tls: bool = True  # check vCenter's certificate (system CAs) over https

    @classmethod
    def from_url(cls, url: str, *, verify_tls: bool = False) -> VSphereTarget:
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
            verify_tls=verify_tls,
        )


def folded_uuid(ident: str) -> str:
    """The loose UUID form the guest agent matches: dashes and spaces gone, lower case."""
    return ident.replace("-", "").replace(" ", "").lower()


def is_connection_error(e: BaseException) -> bool:
    """Whether ``e`` means the session is gone (log in again), not a refused request.
    pyVmomi names its fault classes by their full name (``vim.fault.NotAuthenticated``)."""
    name = type(e).__name__.rsplit(".", 1)[-1]
    return isinstance(e, (OSError, ConnectionError, VSphereError)) or name in (
        "NotAuthenticated",
        "HTTPException",
        "RemoteDisconnected",
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
            raise VSphereError(f"vSphere connect {t.host}:{t.port}: {e}") from e
        self._vm_cache.clear()

    def disconnect(self) -> None:
        if self.si is not None:
            Disconnect = pyvmomi_module("pyVim.connect").Disconnect
            with contextlib.suppress(Exception):
                Disconnect(self.si)
            self.si = None

    def reset(self) -> None:
        """Forget the session: the next ``call`` logs in again."""
        self.si = None

    def find_vm(self, ident: str, uuid_key: Callable[[str], str | None] = folded_uuid) -> Any:
        """By name, or by config.uuid / instanceUuid as ``uuid_key`` canonicalises them."""
        vim = pyvmomi_module("pyVmomi").vim
        if ident in self._vm_cache:
            return self._vm_cache[ident]
        content = self.si.RetrieveContent()
        want = uuid_key(ident)
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        try:
            for vm in view.view:
                cfg = vm.config
                uuids = {
                    uuid_key(getattr(cfg, "uuid", "") or ""),
                    uuid_key(getattr(cfg, "instanceUuid", "") or ""),
                }
                if vm.name == ident or (want is not None and want in uuids):
                    self._vm_cache[ident] = vm
                    return vm
        finally:
            view.Destroy()
        raise VSphereError(f"no VM named {ident!r}")

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

    # async ---------------------------------------------------------------------------
    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self.si is None:
                self.connect()
            try:
                return fn(*args)
            except Exception as e:
                if is_connection_error(e):
                    self.reset()  # a dead session: the next call logs in again
                raise

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(
            functools.partial(self._locked, fn, *args), abandon_on_cancel=True
        )


class PropertyWatch:
    """``paths`` of one VM through a property collector of its own; blocking methods,
    run them through ``conn.call``. ``wait`` returns None when vCenter had nothing
    new within ``max_wait`` seconds, else the changes as (name, op, value)."""

    def __init__(
        self,
        conn: VSphereConn,
        vm: str,
        paths: list[str],
        max_wait: int,
        uuid_key: Callable[[str], str | None] = folded_uuid,
    ) -> None:
        self.conn = conn
        self.vm_ident = vm
        self.paths = paths
        self.max_wait = max_wait
        self.uuid_key = uuid_key
        self.pc: Any = None
        self.vm: Any = None
        self.token = ""

    @property
    def ready(self) -> bool:
        return self.pc is not None

    def setup(self) -> None:
        vim = pyvmomi_module("pyVmomi").vim
        PC = pyvmomi_module("pyVmomi").vmodl.query.PropertyCollector
        vm = self.vm = self.conn.find_vm(self.vm_ident, self.uuid_key)
        self.pc = self.conn.si.content.propertyCollector.CreatePropertyCollector()
        self.pc.CreateFilter(
            PC.FilterSpec(
                objectSet=[PC.ObjectSpec(obj=vm, skip=False)],
                propSet=[PC.PropertySpec(type=vim.VirtualMachine, all=False, pathSet=self.paths)],
            ),
            partialUpdates=False,
        )
        self.token = ""

    def wait(self) -> list[tuple[str, str, Any]] | None:
        PC = pyvmomi_module("pyVmomi").vmodl.query.PropertyCollector
        res = self.pc.WaitForUpdatesEx(self.token, PC.WaitOptions(maxWaitSeconds=self.max_wait))
        if res is None:
            return None
        self.token = res.version
        return [
            (ch.name, ch.op, ch.val)
            for fs in res.filterSet or []
            for obj in fs.objectSet or []
            for ch in obj.changeSet or []
        ]

    def close(self) -> None:
        """Drop the collector and log out (the next ``setup`` starts afresh)."""
        if self.pc is not None:
            with contextlib.suppress(Exception):
                self.pc.DestroyPropertyCollector()
            self.pc = None
        self.conn.disconnect()
