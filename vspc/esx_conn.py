"""Trio adapter for one ESX Telnet connection to the vSPC.

One reader task feeds the sans-IO ``EsxSession`` and hands its events to the
service's switchboard; one writer task drains two outgoing queues, control
frames (GOAHEAD, NOTNOW, PEER-OK, negotiation) first, so a vMotion answer never
waits behind console data bound for the VM.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from vspc.core.esx_session import EsxSession

if TYPE_CHECKING:
    from vspc.service import VspcService

log = logging.getLogger("vspc.esx")

_ids = itertools.count(1)
READ_SIZE = 65536
OUT_HIGH_WATER = 1 << 20


class EsxConnection:
    """One live ESX connection (a hashable token for the switchboard)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        peer: str,
        proxy_rule: Callable[[str, str], bool],
    ) -> None:
        self.id = next(_ids)
        self.stream = stream
        self.peer = peer
        self.session = EsxSession(proxy_rule=proxy_rule)
        self.label: str | None = None
        self.raw_uuid: str | None = None
        self.vm_name: str | None = None
        self.key: object | None = None  # PortKey once bound
        self._control = bytearray()
        self._data = bytearray()
        self._wake = trio.Event()
        self._drained = trio.Event()
        self._closing = False
        self._resume = trio.Event()
        self.close_reason: str | None = None

    def __repr__(self) -> str:
        return f"<esx#{self.id} {self.peer}>"

    def __hash__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:
        return self is other

    # -- outgoing ------------------------------------------------------------
    def send_control(self, data: bytes) -> None:
        if data and not self._closing:
            self._control += data
            self._wake.set()

    def send_console(self, data: bytes) -> None:
        if data and not self._closing:
            self._data += self.session.send_console(data)
            self._wake.set()

    def out_pending(self) -> int:
        return len(self._control) + len(self._data)

    def resume_reading(self) -> None:
        self._resume.set()

    def close_soon(self, reason: str) -> None:
        if not self._closing:
            self._closing = True
            self.close_reason = reason
            self._wake.set()
        self._resume.set()

    async def writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._control or self._data:
                if self._control:
                    chunk = bytes(self._control)
                    self._control.clear()
                else:
                    chunk = bytes(self._data[:READ_SIZE * 4])
                    del self._data[: len(chunk)]
                await self.stream.send_all(chunk)
            if self._closing:
                return
            self._drained.set()
            self._drained = trio.Event()

    async def run(self, service: VspcService) -> None:
        """Serve the connection until EOF, error, or the switchboard closes it."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_then_cancel, nursery.cancel_scope)
                self.send_control(self.session.initial_bytes())
                await self._read_loop(service)
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            log.info("%r: connection lost: %s", self, e)
        except OSError as e:
            log.info("%r: connection error: %s", self, e)
        finally:
            with trio.CancelScope(shield=True):
                await service.connection_closed(self)
                await trio.aclose_forcefully(self.stream)

    async def _write_then_cancel(self, scope: trio.CancelScope) -> None:
        await self.writer()
        scope.cancel()  # closing after a flush (switchboard asked us to close)

    async def _read_loop(self, service: VspcService) -> None:
        while not self._closing:
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                log.debug("%r: EOF", self)
                return
            self.session.receive_data(bytes(data))
            events = self.session.next_events()
            out = self.session.data_to_send()
            if out:
                self.send_control(out)
            for ev in events:
                await service.on_session_event(self, ev)
                if self._closing:
                    return
            while service.board.from_vm_room(self) <= 0 and not self._closing:
                # Held bytes are full (behind a draining vMotion source): stop reading.
                self._resume = trio.Event()
                await self._resume.wait()
