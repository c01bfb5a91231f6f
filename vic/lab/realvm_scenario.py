"""Lab scenario ``realvm`` (optional, not in ``all``: it boots a VM): a tethered real VM.

QEMU boots Debian's kernel with ``vic agent`` as PID 1 (``vic.lab.realvm``); the
agent's ``[session]`` runs over the VM's 16550 UART, which ``vic relay`` (host
``esx-qemu``, a ``[[pipe]]`` in connect mode, labelled ``session``) carries to the
appliance (``[sessions]`` on, the VM's guestinfo the file store on the VM's writable
share). A tap between the relay and the appliance keeps the start of each relayed
stream: the kernel's log, written on the line before the agent starts, then the
handshake. The checks (``vic.lab.realvm_checks``) run the real CLI against it.

    async with booted(service, workdir) as vm:   # one boot, ~1 min under TCG
        checks = [await check(vm) for check in CHECKS]
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from common.proto import guestinfo as gi
from vic.lab import realvm
from vic.lab.agent_processes import stop
from vspc.guestinfo_watch import FileStoreWatcher, configure_session, go_ahead
from vspc.service import VspcService
from vspc.sessions.service import SessionService

VM = "vm-qemu-1"
BOOT_TIMEOUT = 300.0  # a safety net: TCG boots in about a minute on a busy 2-core machine
# The container's main process, on a tty: its first line (logs), then a line of its
# terminal's size for each line typed (attach + resize), exit 7 at "quit".
MAIN = (
    'echo "main up in $(uname -r)"; '
    'while read x; do [ "$x" = quit ] && exit 7; echo "size $(stty size)"; done'
)


def main_session() -> gi.SessionConfig:
    return gi.SessionConfig(
        id="realvm-main",
        path="/bin/sh",
        args=("sh", "-c", MAIN),
        tty=True,
        openstdin=True,
        runblock=True,
    )


class LineTap:
    """Between the relay and the appliance's endpoint socket: passes every byte both
    ways and keeps the first ``KEEP`` bytes of each relayed stream from the VM side
    (the relay's origin header, then the serial line as the VM wrote it)."""

    KEEP = 256 * 1024

    def __init__(self, path: Path, target: Path) -> None:
        self.path = path
        self.target = target
        self.streams: list[bytearray] = []

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.path.unlink(missing_ok=True)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(str(self.path))
        sock.listen(16)
        async with trio.SocketListener(sock) as listener:
            await trio.serve_listeners(self._handle, [listener], task_status=task_status)

    async def _handle(self, relay: trio.SocketStream) -> None:
        seen = bytearray()
        self.streams.append(seen)
        try:
            appliance = await trio.open_unix_socket(str(self.target))
        except OSError:
            await trio.aclose_forcefully(relay)
            return
        async with relay, appliance, trio.open_nursery() as nursery:
            nursery.start_soon(self._pipe, relay, appliance, seen, nursery.cancel_scope)
            nursery.start_soon(self._pipe, appliance, relay, None, nursery.cancel_scope)

    async def _pipe(
        self,
        src: trio.SocketStream,
        dst: trio.SocketStream,
        seen: bytearray | None,
        scope: trio.CancelScope,
    ) -> None:
        try:
            while data := await src.receive_some(65536):
                if seen is not None:
                    seen += data[: max(0, self.KEEP - len(seen))]
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            scope.cancel()


@dataclass
class RealVm:
    files: realvm.VmFiles
    sessions: SessionService
    guestinfo: FileStoreWatcher
    workdir: Path  # the appliance's: console.sock, for ``vic console``
    tap: LineTap
    boot_seconds: float = 0.0  # power-on to the session carried
    release: str = field(default_factory=lambda: realvm.kernel().release)

    @property
    def vm(self) -> str:
        return self.files.vm


def _store(sessions: SessionService) -> FileStoreWatcher:
    if not isinstance(sessions.guestinfo, FileStoreWatcher):
        raise RuntimeError("the appliance's [sessions] has no guestinfo-dir (file store)")
    return sessions.guestinfo


async def wait_carried(sessions: SessionService, vm: str) -> None:
    """Until a connection has carried ``vm``'s session (the tether resumed it)."""
    while (s := await sessions.prepare(vm)).connections == 0:  # the current session
        await s.changed.wait()  # set on each RESUME, and when a new session replaces it


@asynccontextmanager
async def booted(service: VspcService, workdir: Path) -> AsyncIterator[RealVm]:
    """The VM, booted, its session carried through the relay to ``service``'s
    appliance (its endpoint socket ``workdir/endpoint.sock``) and its main process
    let go; powered off (SIGKILL) and the relay stopped afterwards."""
    if service.sessions is None:
        raise RuntimeError("the appliance has [sessions] off")
    sessions, store = service.sessions, _store(service.sessions)
    d = workdir / "realvm"
    files = realvm.prepare(d, store.directory, VM)
    await sessions.prepare(VM)  # the secret in guestinfo, before power-on
    await configure_session(store, VM, main_session())
    tap = LineTap(d / "tap.sock", workdir / "endpoint.sock")
    relay_conf = d / "esx-qemu.toml"
    relay_conf.write_text(realvm.relay_toml(files, tap.path))
    relay = qemu = None
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(tap.serve)
            relay = await realvm.start_relay(relay_conf)
            began = time.monotonic()
            qemu = await realvm.start_qemu(files)
            with trio.fail_after(BOOT_TIMEOUT):
                await wait_carried(sessions, VM)
            vm = RealVm(files, sessions, store, workdir, tap, time.monotonic() - began)
            await go_ahead(store, VM, main_session().id)
            yield vm
        finally:
            await stop(qemu)
            await stop(relay)
            nursery.cancel_scope.cancel()


def console_tail(workdir: Path, n: int = 20) -> str:
    """The end of the VM's console (ttyS0: the kernel's and the agent's stderr)."""
    try:
        text = (workdir / "realvm" / "console.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-n:])
