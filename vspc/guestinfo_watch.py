"""The appliance's view of its containerVMs' guestinfo.

Two sources behind one interface:

* ``VSphereWatcher`` (in ``vspc.guestinfo_vsphere``): the vSphere API (pyVmomi).
* ``FileStoreWatcher``: the file-backed store (one ``<vm>.json`` per VM in a
  directory), woken by inotify.

On top: ``wait_for_started`` (``<nil>``/empty is unset, power-off while waiting
fails, any ``started`` other than ``true`` is the error shown to the user),
``wait_for_exit``, ``wait_for_addresses``, and the appliance's controls
(``configure_session``, ``go_ahead``, ``send_signal``).
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from common.io.guestinfo.filestore import POWERED_OFF, POWERED_ON, FileStore
from common.proto import guestinfo as gi

T = TypeVar("T")


@dataclass(frozen=True)
class VMState:
    """One VM's guestinfo (all extraConfig) and power state at one moment."""

    values: Mapping[str, str] = field(default_factory=dict)
    power: str = POWERED_ON
    version: int = 0

    def session(self, session_id: str) -> gi.SessionView:
        return gi.view_session(session_id, self.values)

    def networks(self) -> dict[str, list[gi.IPAddress]]:
        return gi.view_networks(self.values)

    def errors(self) -> dict[str, str]:
        return gi.view_errors(self.values)


class SessionStartFailed(Exception):
    """The guest reported a launch error; ``str()`` is the text to show the user."""


class VMPoweredOff(Exception):
    """The VM powered off while the appliance was waiting on it."""


class VMWatch(abc.ABC):
    """A stream of states for one VM: the first ``next()`` is the current state."""

    @abc.abstractmethod
    async def next(self) -> VMState: ...

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> VMWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class GuestinfoWatcher(abc.ABC):
    @abc.abstractmethod
    def watch(self, vm: str) -> VMWatch: ...

    @abc.abstractmethod
    async def write(self, vm: str, updates: Mapping[str, str | None]) -> None:
        """The appliance writes config keys (``""``/None removes)."""

    async def state(self, vm: str) -> VMState:
        async with self.watch(vm) as w:
            return await w.next()

    async def aclose(self) -> None:
        return None


# --------------------------------------------------------------------------- file store


class _FileWatch(VMWatch):
    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.version = -1

    async def next(self) -> VMState:
        st = await self.store.wait_newer(self.version)
        self.version = st.version
        return VMState(values=dict(st.values), power=st.power, version=st.version)


class FileStoreWatcher(GuestinfoWatcher):
    """VMs are ``<directory>/<vm>.json`` file stores."""

    def __init__(self, directory: str | Path, **limits: int) -> None:
        self.directory = Path(directory)
        self.limits = limits

    def store(self, vm: str) -> FileStore:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", vm) or vm.startswith("."):
            raise ValueError(f"bad VM name {vm!r}")
        return FileStore(self.directory / f"{vm}.json", **self.limits)

    def watch(self, vm: str) -> VMWatch:
        return _FileWatch(self.store(vm))

    async def write(self, vm: str, updates: Mapping[str, str | None]) -> None:
        self.store(vm).update(dict(updates))

    async def set_power(self, vm: str, power: str) -> None:
        self.store(vm).set_power(power)


# --------------------------------------------------------------------------- waiting


async def wait_for(
    watcher: GuestinfoWatcher,
    vm: str,
    predicate: Callable[[VMState], T | None],
    timeout: float,
    *,
    fail_on_power_off: bool = True,
) -> T:
    """Wait until ``predicate(state)`` returns non-None; raises trio.TooSlowError,
    VMPoweredOff (when asked), or whatever the predicate raises."""
    with trio.fail_after(timeout if timeout > 0 else math.inf):
        async with watcher.watch(vm) as w:
            while True:
                st = await w.next()
                got = predicate(st)
                if got is not None:
                    return got
                if fail_on_power_off and st.power == POWERED_OFF:
                    raise VMPoweredOff(f"{vm} powered off")


async def wait_for_started(
    watcher: GuestinfoWatcher, vm: str, session: str, timeout: float
) -> None:
    """Return once ``started`` is ``true``. Launch error -> SessionStartFailed(text);
    power-off -> VMPoweredOff; timeout -> trio.TooSlowError."""

    def pred(st: VMState) -> bool | None:
        v = st.session(session)
        if v.started is None:
            return None
        if v.started == gi.TRUE:
            return True
        raise SessionStartFailed(v.started)

    await wait_for(watcher, vm, pred, timeout)


async def wait_for_exit(
    watcher: GuestinfoWatcher, vm: str, session: str, timeout: float
) -> gi.ExitInfo:
    def pred(st: VMState) -> gi.ExitInfo | None:
        v = st.session(session)
        if v.exit is not None:
            return v.exit
        if v.start_error is not None:
            raise SessionStartFailed(v.start_error)
        return None

    return await wait_for(watcher, vm, pred, timeout)


async def wait_for_addresses(
    watcher: GuestinfoWatcher,
    vm: str,
    check: Callable[[dict[str, list[gi.IPAddress]]], bool],
    timeout: float,
) -> dict[str, list[gi.IPAddress]]:
    def pred(st: VMState) -> dict[str, list[gi.IPAddress]] | None:
        nets = st.networks()
        return nets if check(nets) else None

    return await wait_for(watcher, vm, pred, timeout, fail_on_power_off=False)


async def configure_session(
    watcher: GuestinfoWatcher, vm: str, cfg: gi.SessionConfig, container_id: str = ""
) -> None:
    await watcher.write(vm, gi.encode_sessions([cfg], container_id or cfg.id))


async def go_ahead(watcher: GuestinfoWatcher, vm: str, session: str) -> None:
    await watcher.write(vm, {gi.goahead_key(session): gi.TRUE})


async def send_signal(
    watcher: GuestinfoWatcher, vm: str, session: str, signame: str, timeout: float = 10.0
) -> int:
    """Ask the guest to signal the session's process; waits for the guest's ack."""
    st = await watcher.state(vm)
    prev = gi.decode_signal_request(st.values.get(gi.signal_key(session)))
    seq = (prev[0] if prev else 0) + 1
    await watcher.write(vm, {gi.signal_key(session): gi.encode_signal_request(seq, signame)})

    def acked(s: VMState) -> int | None:
        acked = gi.parse_seq(s.values.get(gi.signal_ack_key(session)))
        return seq if acked is not None and acked >= seq else None

    return await wait_for(watcher, vm, acked, timeout, fail_on_power_off=False)


# --------------------------------------------------------------------------- display


def summarize(vm: str, st: VMState, sessions: list[str] | None = None) -> dict[str, Any]:
    """What the appliance knows about one VM, as plain data (for the lab and CLIs)."""
    if sessions is None:
        sessions = gi.decode_map_keys(st.values.get(gi.sessions_key()))
    out: dict[str, Any] = {
        "vm": vm,
        "power": st.power,
        "addresses": {net: [str(a) for a in addrs] for net, addrs in st.networks().items()},
        "errors": st.errors(),
        "sessions": {},
    }
    for sid in sessions:
        v = st.session(sid)
        if v.exit is not None:
            state = "exited"
        elif v.start_error is not None:
            state = "failed"
        elif v.started is not None:
            state = "running"
        else:
            state = "pending"
        out["sessions"][sid] = {
            "state": state,
            "error": v.start_error,
            "status": v.exit.status if v.exit else None,
            "signal": v.exit.signal if v.exit else None,
            "stoptime": v.exit.stoptime if v.exit else None,
        }
    return out


def format_summary(summary: Mapping[str, Any]) -> str:
    """One line per VM: ``vm1 poweredOn public=10.0.0.5 c1:exited(3) c2:failed(...)``."""
    parts = [str(summary["vm"]), str(summary["power"])]
    addrs = summary.get("addresses") or {}
    parts += [f"{net}={','.join(a)}" for net, a in sorted(addrs.items())] or ["no-address"]
    for sid, s in sorted((summary.get("sessions") or {}).items()):
        if s["state"] == "exited":
            extra = f"({s['status']}{' ' + s['signal'] if s['signal'] else ''})"
        elif s["state"] == "failed":
            extra = f"({s['error']})"
        else:
            extra = ""
        parts.append(f"{sid}:{s['state']}{extra}")
    for comp, text in sorted((summary.get("errors") or {}).items()):
        parts.append(f"error[{comp}]={text!r}")
    return " ".join(parts)
