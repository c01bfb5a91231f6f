"""A lab VM's device: the socket its guest agent connects to, owned by the lab.

On ESX a tethered VM's vsock (or serial port) is a device of the host the VM runs
on: its connections end in that host's relay. A vMotion moves the VM to another
host, and a vsock connection does not survive the move: the guest sees it reset,
and the tether connects again, now into the destination host's relay.

The lab models that with one forwarder per VM. The agent's console socket is
``path``; each connection made to it is forwarded to the relay ingress (a Unix
socket) of the host the VM is on at that moment. ``move(host)`` is the vMotion's
switchover: from then on new connections go to ``host``, and every live connection
is reset at once (both ends closed, whatever was in flight lost, as a move loses it).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from common.io.unixlisten import open_unix_listener

log = logging.getLogger("vic.lab.vm_device")

READ_SIZE = 65536


class VmDevice:
    """The device of VM ``vm`` at ``path``, forwarding to ``ingress[host]`` of its host."""

    def __init__(self, vm: str, path: Path, ingress: Mapping[str, Path], host: str) -> None:
        if host not in ingress:
            raise ValueError(f"no ingress for host {host!r}")
        self.vm = vm
        self.path = path
        self.ingress = dict(ingress)
        self.host = host
        self.forwarded: Counter[str] = Counter()  # connections forwarded, per host
        self.refused = 0  # connections made while the host's relay did not answer
        self.resets = 0  # live connections reset by moves
        self._live: dict[trio.CancelScope, str] = {}
        self._forwarding = trio.lowlevel.ParkingLot()

    @property
    def live(self) -> int:
        return len(self._live)

    async def forwarded_to(self, host: str, n: int) -> None:
        """Return once ``n`` connections in all were forwarded to ``host``."""
        while self.forwarded[host] < n:
            await self._forwarding.park()

    def move(self, host: str) -> int:
        """Switch the VM to ``host``; reset every live connection; return how many."""
        if host not in self.ingress:
            raise ValueError(f"no ingress for host {host!r}")
        self.host = host
        n = len(self._live)
        for scope in list(self._live):
            scope.cancel()
        self._live.clear()
        self.resets += n
        log.info("%s moved to %s: %d live connection(s) reset", self.vm, host, n)
        return n

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listener = await open_unix_listener(self.path, mode=0o600, backlog=16)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(self)
                while True:
                    guest = await listener.accept()
                    nursery.start_soon(self._forward, guest)
        finally:
            listener.close()

    async def _forward(self, guest: trio.SocketStream) -> None:
        host = self.host
        try:
            relay = await trio.open_unix_socket(str(self.ingress[host]))
        except OSError as e:
            self.refused += 1
            log.info("%s: relay of %s not reachable: %s", self.vm, host, e)
            await trio.aclose_forcefully(guest)
            return
        if host != self.host:  # moved while connecting: this connection is reset too
            await trio.aclose_forcefully(relay)
            await trio.aclose_forcefully(guest)
            return
        self.forwarded[host] += 1
        self._forwarding.unpark_all()
        scope = trio.CancelScope()
        self._live[scope] = host
        try:
            with scope:
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(_pump, guest, relay, pumps.cancel_scope)
                    pumps.start_soon(_pump, relay, guest, pumps.cancel_scope)
        finally:
            self._live.pop(scope, None)
            await trio.aclose_forcefully(guest)
            await trio.aclose_forcefully(relay)


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Copy until either side ends; then the connection ends both ways."""
    try:
        while data := await src.receive_some(READ_SIZE):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    scope.cancel()
