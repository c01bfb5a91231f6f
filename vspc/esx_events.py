"""What an ESX connection's session events mean to the vSPC service: console bytes
and vMotion commands go to the switchboard; the VM's identity is checked (a relay
speaks only for VMs on its own host) before the switchboard hears it; DO-PROXY and
the VM's name are noted; a protocol violation closes the connection."""

from __future__ import annotations

import logging

import trio

from common.ops.wiretext import wire
from common.proto.telnet import vmware as ext
from vspc.core import esx_session as es
from vspc.core.board_actions import Action, SendGoahead
from vspc.core.identity import canonical_uuid
from vspc.esx_conn import EsxConnection
from vspc.service_shape import ServiceShape

log = logging.getLogger("vspc")

_VMOTION = (ext.VMotionBegin, ext.VMotionPeer, ext.VMotionComplete, ext.VMotionAbort)


class SessionEvents(ServiceShape):
    async def on_session_event(self, conn: EsxConnection, ev: object) -> None:
        if isinstance(ev, es.ConsoleData):
            await self._execute(self.board.from_vm(conn, ev.data))
        elif isinstance(ev, _VMOTION):
            await self._on_vmotion(conn, ev, trio.current_time())
        elif isinstance(ev, es.VmUuid):
            self.liveness.identified(conn)
            await self._identified(conn, ev.raw, trio.current_time())
        elif isinstance(ev, es.ProxyRequested):
            if ev.label and conn.label is None:
                conn.label = ev.label
            log.info(
                "%r: DO-PROXY %s %s -> %s",
                conn,
                ev.direction,
                wire(ev.uri),
                "WILL" if ev.accepted else "WONT",
            )
        elif isinstance(ev, ext.VmName):
            self._vm_named(conn, ev.name)
        elif isinstance(ev, es.ProtocolViolation):
            self._violation(conn, ev.reason)

    async def _on_vmotion(
        self,
        conn: EsxConnection,
        ev: ext.VMotionBegin | ext.VMotionPeer | ext.VMotionComplete | ext.VMotionAbort,
        now: float,
    ) -> None:
        if isinstance(ev, ext.VMotionBegin):
            secret = self._secret_source(self.config.vmotion.secret_bytes)
            answered = self._goahead_first(conn, ev.seq, secret)
            actions = self.board.begin(conn, ev.seq, secret, now)  # (no await since)
            if answered:
                actions = _answered(actions, conn)
            await self._execute(actions, received=conn.received_at, answer_on=conn)
            self._deadline_changed.set()
        elif isinstance(ev, ext.VMotionPeer):
            await self._execute(self.board.peer(conn, ev.cookie, now), answer_on=conn)
            if self.board.port_of(conn) is not None:
                self.liveness.identified(conn)  # bound by its cookie: it is who it says
        elif isinstance(ev, ext.VMotionComplete):
            await self._execute(self.board.complete(conn, ev.seq, now))
            self._deadline_changed.set()
        else:
            await self._execute(self.board.abort(conn, now))

    def _goahead_first(self, conn: EsxConnection, seq: bytes, secret: bytes) -> bool:
        """GOAHEAD written before the switchboard keeps its books for it (``begin``,
        called next, finds the same), if the board answers so and the socket takes it
        at once: the answer leaves without waiting for the bookkeeping."""
        if not self.board.begin_is_goahead(conn, seq, secret):
            return False
        if not conn.answer_at_once(conn.session.goahead(seq, secret)):
            return False
        self.metrics.begin_to_goahead_seconds.observe(trio.current_time() - conn.received_at)
        return True

    def _vm_named(self, conn: EsxConnection, name: str) -> None:
        conn.vm_name = name
        key = self.board.port_of(conn)
        if key is not None:
            self._displays[key] = name
            console = self.consoles.get(key)
            if console is not None:
                self.consoles.open(key, name)

    async def _identified(self, conn: EsxConnection, raw: str, now: float) -> None:
        conn.raw_uuid = raw
        try:
            uuid = canonical_uuid(raw)
        except ValueError:
            self._violation(conn, f"bad VM-VC-UUID {raw}")
            return
        if not await self._relay_may_speak_for(conn, raw, uuid):
            return
        # No label while a vMotion of the VM is pending: most likely its destination
        # (it need not send DO-PROXY); the switchboard defers it until VMOTION-PEER.
        label = conn.session.label or conn.label
        await self._execute(self.board.identify(conn, uuid, label, now))

    async def _relay_may_speak_for(self, conn: EsxConnection, raw: str, uuid: str) -> bool:
        """A Telnet stream relayed from host H may name only a VM that vCenter places
        on H (with ``[endpoint.vcenter]``). A pending vMotion of the VM is the
        exception: its destination host speaks for it before vCenter moves it, and
        VMOTION-PEER's secret is the proof then."""
        if self.relayed_vm_check is None or not conn.peer.startswith("relay:"):
            return True
        if self.board.vmotion_pending_for(uuid):
            return True
        reason = await self.relayed_vm_check(raw, conn.peer.removeprefix("relay:"))
        if reason is None:
            return True
        log.warning("%r: refused: %s", conn, wire(reason))
        self.metrics.telnet_refused_total.labels(reason="placement").inc()
        conn.close_soon(f"refused: {reason}")
        return False

    def _violation(self, conn: EsxConnection, reason: str) -> None:
        log.warning("%r: protocol violation, closing: %s", conn, wire(reason, 200))
        self.metrics.protocol_errors_total.labels(where="esx").inc()
        conn.close_soon(f"protocol violation: {reason}")


def _answered(actions: list[Action], conn: EsxConnection) -> list[Action]:
    """The actions of a BEGIN whose GOAHEAD is written already: all but that one."""
    rest = [a for a in actions if not (isinstance(a, SendGoahead) and a.conn is conn)]
    if len(rest) == len(actions):  # (begin_is_goahead and begin disagree: a bug)
        log.error("%r: GOAHEAD written, but the switchboard did not answer GOAHEAD", conn)
    return rest
