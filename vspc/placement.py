"""Which ESX host vCenter says each VM runs on: the endpoint's check that a relay
speaks only for VMs on its own host (``[endpoint.vcenter]``).

One snapshot maps every VM key (name, canonical ``config.uuid`` and
``config.instanceUuid``) to the names of the hosts (``runtime.host``) running a
VM by that key. A snapshot is trusted for ``refresh`` seconds; a VM that is
unknown, or placed on another host (it may just have moved), makes the endpoint
ask again, at most every ``min-refresh`` seconds. When vCenter cannot be reached
the last snapshot stands; with none, every VM is refused (fail closed).

pyVmomi blocks: the queries run in a worker thread (``VSphereConn.call``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import trio

from common.io.vsphere import VSphereConn, pyvmomi_module
from common.ops.wiretext import wire
from common.proto.identity import uuid_key, vm_key
from vspc.config import VCenterCheck

log = logging.getLogger("vspc.placement")

Snapshot = Mapping[str, frozenset[str]]  # VM key -> host names
QUERY_TIMEOUT = 10.0  # seconds for one placement query (streams wait on it)


def verdict(snapshot: Snapshot | None, vm: str, host: str, error: str = "") -> str | None:
    """None if ``snapshot`` places VM ``vm`` (a valid key) on ``host``; else why not."""
    if snapshot is None:
        return f"vCenter has not answered yet ({error or 'no snapshot'})"
    hosts = snapshot.get(vm_key(vm))
    if not hosts:
        return f"vCenter knows no VM {vm!r}"
    if host not in hosts:
        return f"vCenter places VM {vm!r} on {', '.join(sorted(hosts))}, not on {host!r}"
    return None


class Placement:
    """Cached VM -> host placement from vCenter; ``check`` is the endpoint's question."""

    def __init__(self, cfg: VCenterCheck, conn: VSphereConn | None = None) -> None:
        self.cfg = cfg
        self.conn = conn if conn is not None else VSphereConn(cfg.target())
        self.snapshot: Snapshot | None = None
        self.taken = -float("inf")  # trio time of the last query (answered or not)
        self.error = ""
        self.queries = 0
        self._lock = trio.Lock()

    async def check(self, vm: str, host: str) -> str | None:
        """None if vCenter places ``vm`` on ``host``, else the reason to refuse."""
        now = trio.current_time()
        if now - self.taken >= self.cfg.refresh:
            await self._refresh(now)
        elif (
            verdict(self.snapshot, vm, host) is not None
            and now - self.taken >= self.cfg.min_refresh
        ):
            await self._refresh(now)
        return verdict(self.snapshot, vm, host, self.error)

    async def _refresh(self, asked: float) -> None:
        async with self._lock:
            if self.taken >= asked:  # another stream refreshed while we waited
                return
            self.queries += 1
            try:
                with trio.fail_after(QUERY_TIMEOUT):
                    snap = await self.conn.call(self._collect)
            except Exception as e:  # any API or connection error: keep the last snapshot
                why = (
                    f"no answer within {QUERY_TIMEOUT}s"
                    if isinstance(e, trio.TooSlowError)
                    else f"{type(e).__name__}: {e}"
                )
                if not self.error:
                    log.warning(
                        "vCenter placement query failed (keeping the last answer): %s", wire(why)
                    )
                self.error = why
                self.conn.reset()  # reconnect next time
            else:
                if self.error:
                    log.info("vCenter placement query answered again")
                self.snapshot, self.error = snap, ""
            self.taken = trio.current_time()

    def _collect(self) -> dict[str, frozenset[str]]:
        """Blocking: every VM's keys and host name, in two property collector calls."""
        vim = pyvmomi_module("pyVmomi").vim
        content = self.conn.si.RetrieveContent()
        hosts = {
            moid: str(p.get("name", ""))
            for moid, p in _retrieve(content, vim.HostSystem, ["name"]).items()
        }
        out: dict[str, set[str]] = {}
        paths = ["name", "config.uuid", "config.instanceUuid", "runtime.host"]
        for props in _retrieve(content, vim.VirtualMachine, paths).values():
            ref = props.get("runtime.host")
            host = hosts.get(ref._moId) if ref is not None else None
            if not host:
                continue
            keys = {str(props.get("name") or "")}
            keys |= {uuid_key(str(props.get(p) or "")) or "" for p in paths[1:3]}
            for key in keys - {""}:
                out.setdefault(key, set()).add(host)
        return {k: frozenset(v) for k, v in out.items()}

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self.conn.disconnect)


def _retrieve(content: Any, kind: Any, paths: list[str]) -> dict[str, dict[str, Any]]:
    """``paths`` of every managed object of ``kind`` under the root folder, by moid."""
    vim = pyvmomi_module("pyVmomi").vim
    pc = pyvmomi_module("pyVmomi").vmodl.query.PropertyCollector
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        spec = pc.FilterSpec(
            objectSet=[
                pc.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        pc.TraversalSpec(
                            name="view", path="view", skip=False, type=vim.view.ContainerView
                        )
                    ],
                )
            ],
            propSet=[pc.PropertySpec(type=kind, all=False, pathSet=paths)],
        )
        found = content.propertyCollector.RetrieveContents([spec]) or []
        return {oc.obj._moId: {p.name: p.val for p in (oc.propSet or [])} for oc in found}
    finally:
        view.Destroy()
