"""What the Docker endpoint knows of each containerVM, gathered from the appliance.

The containers are the VMs with a session here (``SessionsApi.vms``) and the
VMs of the file guestinfo store (``<vm>.json`` in ``[sessions] guestinfo-dir``;
with ``guestinfo = "vsphere"`` only the VMs with a session are listed);
each one's ``ContainerFacts`` (``vspc.core.docker_shapes``) come from its
guestinfo (session config, start and exit, networks, power) and the session
service's view of its main process. ``find(ref)`` resolves a reference as
docker does: a name (with or without the leading ``/``), a full id, or an
unambiguous id prefix. ``wait_exited(vm)`` returns once the container has
exited, woken by the session and by guestinfo changes alike. ``signal``
reaches the main process through the session, else through guestinfo (the
guest acknowledges the request).
"""

from __future__ import annotations

import re

import trio

from common.io.guestinfo.base import BackendError
from common.proto.guestinfo.errors import GuestinfoError
from vspc.core.docker_api import DockerError
from vspc.core.docker_shapes import ContainerFacts, MainFacts, State, container_state
from vspc.guestinfo_watch import FileStoreWatcher, GuestinfoWatcher, send_signal
from vspc.sessions.api import NoSession, SessionsApi

POWERED_OFF = "poweredOff"
MAX_CONTAINERS = 10000
GUESTINFO_SIGNAL_TIMEOUT = 10.0
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class Pulse:
    """A counter of changes and a way to wait past a count (no wake-up is lost)."""

    def __init__(self) -> None:
        self.n = 0
        self._ev = trio.Event()

    def poke(self) -> None:
        self.n += 1
        self._ev.set()
        self._ev = trio.Event()

    async def wait_past(self, n: int) -> None:
        while self.n <= n:
            await self._ev.wait()


class Containers:
    def __init__(self, api: SessionsApi | None, guestinfo: GuestinfoWatcher | None) -> None:
        self.api = api
        self.guestinfo = guestinfo

    def names(self) -> list[str]:
        names: set[str] = set(self.api.vms()) if self.api is not None else set()
        if isinstance(self.guestinfo, FileStoreWatcher):
            try:
                for p in self.guestinfo.directory.glob("*.json"):
                    if not p.name.startswith(".") and _NAME.fullmatch(p.stem):
                        names.add(p.stem)
                        if len(names) >= MAX_CONTAINERS:
                            break
            except OSError:
                pass
        return sorted(names)

    async def _guestinfo(self, vm: str) -> tuple[dict[str, str], bool]:
        if self.guestinfo is None:
            return {}, True
        try:
            if isinstance(self.guestinfo, FileStoreWatcher):
                st = self.guestinfo.store(vm).read()
                return dict(st.values), st.power != POWERED_OFF
            state = await self.guestinfo.state(vm)
            return dict(state.values), state.power != POWERED_OFF
        except (GuestinfoError, BackendError, OSError, ValueError):
            return {}, True  # unknown: the session's view alone

    def _main(self, vm: str) -> MainFacts | None:
        if self.api is None:
            return None
        try:
            s = self.api.status(vm)
        except NoSession:
            return None
        ex = s.exit
        return MainFacts(
            state=s.main.value,
            exit_code=None if ex is None else ex.code,
            signal=None if ex is None else ex.signal,
            reason=s.reason,
            connected=s.connected,
        )

    async def facts(self, vm: str) -> ContainerFacts:
        values, on = await self._guestinfo(vm)
        return ContainerFacts(vm, values, on, self._main(vm))

    async def all(self) -> list[ContainerFacts]:
        return [await self.facts(vm) for vm in self.names()]

    async def find(self, ref: str) -> ContainerFacts:
        """See the module doc; ``DockerError(404)`` when nothing matches."""
        name = ref.removeprefix("/")
        names = self.names()
        if name in names:
            return await self.facts(name)
        every = await self.all()
        exact = [f for f in every if f.id == ref]
        if exact:
            return exact[0]
        prefixed = [f for f in every if ref and f.id.startswith(ref.lower())]
        if len(prefixed) == 1:
            return prefixed[0]
        if len(prefixed) > 1:
            raise DockerError(400, f"multiple IDs found with provided prefix: {ref}")
        raise DockerError(404, f"No such container: {ref}")

    async def wait_exited(self, vm: str) -> State:
        """Until the container has exited: its state then."""
        pulse = Pulse()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._session_changes, vm, pulse)
            nursery.start_soon(self._guestinfo_changes, vm, pulse)
            while True:
                seen = pulse.n
                st = container_state(await self.facts(vm))
                if st.status == "exited":
                    nursery.cancel_scope.cancel()
                    return st
                await pulse.wait_past(seen)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _session_changes(self, vm: str, pulse: Pulse) -> None:
        if self.api is None:
            return
        while (s := self.api.service.find(vm)) is not None:
            await s.changed.wait()
            pulse.poke()

    async def _guestinfo_changes(self, vm: str, pulse: Pulse) -> None:
        if self.guestinfo is None:
            return
        try:
            async with self.guestinfo.watch(vm) as w:
                while True:
                    await w.next()
                    pulse.poke()
        except (GuestinfoError, BackendError, OSError, ValueError):
            return

    async def signal(self, f: ContainerFacts, signo: int) -> None:
        """To the main process: through the session, else through guestinfo."""
        if self.api is not None:
            try:
                if self.api.signal(f.name, signo):
                    return
            except NoSession:
                pass
        sid = f.session_id
        if self.guestinfo is None or sid is None:
            raise DockerError(409, f"cannot signal {f.name}: no session and no guestinfo control")
        try:
            await send_signal(self.guestinfo, f.name, sid, str(signo), GUESTINFO_SIGNAL_TIMEOUT)
        except trio.TooSlowError:
            raise DockerError(500, f"{f.name}: the guest did not take the signal") from None
        except (GuestinfoError, BackendError, OSError) as e:
            raise DockerError(500, f"{f.name}: cannot signal through guestinfo: {e}") from None


def exited(f: ContainerFacts) -> bool:
    return container_state(f).status == "exited"
