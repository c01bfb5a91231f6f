"""Carrying out the switchboard's actions: writes to ESX connections, console bytes
and events, closes, probes, and the decisions it states (settled vMotions, refused
PEERs, deferred identities). The switchboard decides; this only does."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

import trio

from common.ops.wiretext import wire
from vspc.console.hub import Console
from vspc.core import switchboard as sb
from vspc.core.identity import PortKey
from vspc.esx_conn import EsxConnection
from vspc.esx_listener import is_tls
from vspc.service_shape import ServiceShape, as_esx

log = logging.getLogger("vspc")

#: The vMotion answers, written at once when their connection's reader asked.
_ANSWERS = (sb.SendGoahead, sb.SendNotNow, sb.SendPeerOk)


class ActionRunner(ServiceShape):
    async def _execute(
        self,
        actions: list[sb.Action],
        *,
        received: float | None = None,
        answer_on: EsxConnection | None = None,
    ) -> None:
        """Carry out switchboard actions in order. A vMotion answer for ``answer_on``
        (the connection whose reader calls) is written before anything else is done."""
        for a in actions:
            if isinstance(a, sb.SendData):
                as_esx(a.conn).send_console(a.data)
                self._bytes_to_vm.inc(len(a.data))
            elif isinstance(a, sb.Deliver):
                self._bytes_from_vm.inc(len(a.data))
                await self.backlogs.deliver(a.key, a.data)
            elif isinstance(a, _ANSWERS):
                await self._answer_vmotion(a, received, answer_on)
            elif isinstance(a, sb.IdentityReady):
                conn = as_esx(a.conn)
                if not conn.closing:
                    await self._execute(self.board.claim(conn, a.key, trio.current_time()))
            else:
                self._act(a)
        self._sync_connected()

    async def _answer_vmotion(
        self,
        a: sb.SendGoahead | sb.SendNotNow | sb.SendPeerOk,
        received: float | None,
        answer_on: EsxConnection | None,
    ) -> None:
        conn = as_esx(a.conn)
        if isinstance(a, sb.SendGoahead):
            data = conn.session.goahead(a.seq, a.secret)
            sent_at = trio.current_time()  # (a send may return after a schedule point)
            await self._answer(conn, data, answer_on)  # the answer first, then the books
            if received is not None:
                self.metrics.begin_to_goahead_seconds.observe(sent_at - received)
        elif isinstance(a, sb.SendNotNow):
            await self._answer(conn, conn.session.notnow(a.seq), answer_on)
            self.metrics.vmotions_total.labels(outcome="notnow").inc()
        else:
            await self._answer(conn, conn.session.peer_ok(a.seq), answer_on)

    def _act(self, a: sb.Action) -> None:
        """The actions carried out without waiting."""
        if isinstance(a, sb.CloseConn):
            as_esx(a.conn).close_soon(a.reason)
        elif isinstance(a, sb.PortEvent):
            self._port_event(a)
        elif isinstance(a, sb.RoomAvailable):
            ev = self._room.pop(a.key, None)
            if ev is not None:
                ev.set()
        elif isinstance(a, sb.ResumeReading):
            as_esx(a.conn).resume_reading()
        elif isinstance(a, sb.Dropped):
            log.warning("%r: %d bytes dropped: %s", a.conn, len(a.data), a.reason)
        elif isinstance(a, sb.ProbeConn):
            self._probe(as_esx(a.conn))
        else:
            self._decided(a)

    def _decided(self, a: sb.Action) -> None:
        """The switchboard's decisions: count them, close, note, log."""
        if isinstance(a, sb.VMotionSettled):
            self.metrics.vmotions_total.labels(outcome=a.outcome.value).inc()
        elif isinstance(a, sb.PeerRefused):
            self.metrics.vmotions_total.labels(outcome="peer_refused").inc()
            if a.close:  # (a confused carrier is not closed: its VM stays connected)
                as_esx(a.conn).close_soon("VMOTION-PEER refused")
        elif isinstance(a, sb.PortClaimed):
            conn = as_esx(a.conn)
            self._displays.setdefault(a.key, conn.vm_name or conn.raw_uuid or a.key.uuid)
        elif isinstance(a, sb.IdentityDeferred):
            conn = as_esx(a.conn)
            log.info(
                "%r: VM %s, no port label, a vMotion of this VM is pending: "
                "waiting for VMOTION-PEER",
                conn,
                wire(conn.raw_uuid or a.uuid),
            )

    def _sync_connected(self) -> None:
        n = self.board.carried_ports()
        if n != self._carried:
            self.metrics.connected_vms.inc(n - self._carried)
            self._carried = n

    @staticmethod
    async def _answer(conn: EsxConnection, data: bytes, answer_on: EsxConnection | None) -> None:
        if conn is answer_on:
            await conn.send_control_now(data)  # from its reader: at once
        else:
            conn.send_control(data)  # another task: the connection's writer sends it

    def _console(self, key: PortKey) -> Console:
        return self.consoles.open(key, self._displays.get(key, ""))  # "": keep the console's

    def _sync_link(self, key: PortKey, console: Console) -> None:
        """The console has a live link from here while the port has a carrier or a
        vMotion pending (its input is then buffered for the destination)."""
        live = self.board.carrier(key) is not None or any(
            v.key == key for v in self.board.pending_vmotions()
        )
        link = self._links.get(key)
        if live and link is None:
            carrier = self.board.carrier(key)
            origin = str(getattr(carrier, "peer", ""))  # the ESX host's address
            self._links[key] = console.connect(_InputSink(self, key), origin)
        elif not live and link is not None:
            del self._links[key]
            self._displays.pop(key, None)  # the console keeps it; a reconnect tells it again
            console.disconnect(link)

    def _port_event(self, ev: sb.PortEvent) -> None:
        conn = ev.conn
        if log.isEnabledFor(logging.INFO):  # (the repr is not free)
            log.info(
                "port %s: %s %s%s",
                wire(str(ev.key or "-")),
                ev.kind,
                wire(ev.detail, 200),
                f" ({conn!r})" if conn is not None else "",
            )
        if ev.kind is sb.EventKind.TAKEOVER_REFUSED and isinstance(conn, EsxConnection):
            conn.refusal = "takeover"
            log.warning("%r: takeover of port %s refused: %s", conn, wire(str(ev.key)), ev.detail)
        if ev.key is None:
            return
        console = self._console(ev.key)
        if isinstance(conn, EsxConnection):
            bound = self.board.port_of(conn)
            if conn.key is None and bound == ev.key:  # first event of this connection here
                console.event(
                    "connect",
                    peer=conn.peer,
                    uuid=conn.raw_uuid or "",
                    name=conn.vm_name or "",
                    tls=is_tls(conn.stream),
                )
            conn.key = bound
        fields: dict[str, object] = {"detail": ev.detail}
        if isinstance(conn, EsxConnection):
            fields["peer"] = conn.peer
        console.event(str(ev.kind), **fields)
        self._sync_link(ev.key, console)


class _InputSink:
    """A console's input sink: ``service.to_vm`` for one port (smaller than a closure)."""

    __slots__ = ("key", "service")

    def __init__(self, service: ServiceShape, key: PortKey) -> None:
        self.service = service
        self.key = key

    def __call__(self, data: bytes) -> Coroutine[Any, Any, None]:
        return self.service.to_vm(self.key, data)
