"""The switchboard's side of vMotion: pending vMotions, their effects, deferred identities.

Part of ``vspc.core.switchboard.Switchboard`` (sans-IO). The per-port vMotion state
machine is the table in ``common.proto.vmotion``; this carries out the effects of its
transitions across ports and connections (cookies, the per-source caps, the switch to
the destination, who loses when a vMotion settles) and states the outcomes
explicitly (``VMotionSettled``). It also owns identity deferral: a connection that
names a VM whose vMotion is pending, but not its port, waits for VMOTION-PEER; when
the vMotion settles without it, ``IdentityReady`` tells the adapter to claim it.
"""

from __future__ import annotations

from common.proto.vmotion import Effect, Input, Pending, State, Step
from vspc.core.board_actions import (
    Action,
    Conn,
    EventKind,
    IdentityReady,
    Outcome,
    PortEvent,
    SendGoahead,
    SendNotNow,
    SendPeerOk,
    VMotionInfo,
    VMotionSettled,
)
from vspc.core.board_records import NO_RECS, ConnRec, PortRec, Role, added
from vspc.core.carriers import CarrierTable
from vspc.core.identity import DEFAULT_LABEL, PortKey

_LOG_KIND: dict[Effect, EventKind] = {
    Effect.LOG_BEGIN: EventKind.VMOTION_BEGIN,
    Effect.LOG_NOTNOW: EventKind.VMOTION_NOTNOW,
    Effect.LOG_PEER: EventKind.VMOTION_PEER,
    Effect.LOG_PEER_REFUSED: EventKind.PEER_REFUSED,
    Effect.LOG_COMPLETE: EventKind.VMOTION_COMPLETE,
    Effect.LOG_COMPLETE_REFUSED: EventKind.COMPLETE_REFUSED,
    Effect.LOG_ABORT: EventKind.VMOTION_ABORT,
    Effect.LOG_ABORT_IGNORED: EventKind.ABORT_IGNORED,
    Effect.LOG_EXPIRE: EventKind.VMOTION_EXPIRE,
    Effect.LOG_SOURCE_CLOSED: EventKind.SOURCE_CLOSED,
    Effect.LOG_DEST_CLOSED: EventKind.DEST_CLOSED,
}


def _detail(step: Step) -> str:
    parts = [f"seq={step.seq.hex()}"] if step.seq else []
    if step.note:
        parts.append(step.note)
    return "; ".join(parts)


_OUTCOME: dict[Input, Outcome] = {
    Input.COMPLETE: Outcome.COMPLETE,
    Input.ABORT: Outcome.ABORT,
    Input.EXPIRE: Outcome.EXPIRED,
}

#: Effects that only keep the books (``connection_closed`` handles the connection's
#: own record on DROP_DEST / DROP_SOURCE).
_BOOKKEEPING = frozenset({Effect.START, Effect.CLEAR, Effect.SET_DEST})
_NO_OP = frozenset({Effect.DROP_DEST, Effect.DROP_SOURCE})


class VMotionTable(CarrierTable):
    def __init__(
        self,
        *,
        vmotion_timeout: float,
        max_concurrent_vmotions: int,
        max_vmotions_per_source: int,
        to_vm_buffer_limit: int,
        from_vm_hold_limit: int,
    ) -> None:
        super().__init__(
            to_vm_buffer_limit=to_vm_buffer_limit, from_vm_hold_limit=from_vm_hold_limit
        )
        self.vmotion_timeout = vmotion_timeout
        self.max_concurrent_vmotions = max_concurrent_vmotions
        self.max_vmotions_per_source = max_vmotions_per_source
        self._by_source: dict[object, int] = {}  # pending vMotions per BEGIN source address
        self._pending: dict[PortKey, PortRec] = {}  # ports whose vMotion is not IDLE
        self._cookies: dict[bytes, PortKey] = {}  # seq + secret -> port
        self._deferred: dict[Conn, str] = {}  # conn -> canonical uuid, waiting for PEER
        self._settled = False  # a vMotion settled in this call: resolve deferred identities

    def pending_vmotions(self) -> list[VMotionInfo]:
        out = []
        for key, port in self._pending.items():
            p = port.vm.pending
            assert p is not None
            out.append(
                VMotionInfo(key, port.vm.state, p.seq, p.source, p.dest, p.started, p.deadline)
            )
        return out

    def vmotion_pending_for(self, uuid: str) -> bool:
        """Whether a vMotion of VM ``uuid`` (on any of its ports) is pending."""
        return any(port.key.uuid == uuid for port in self._pending.values())

    def next_deadline(self) -> float | None:
        best: float | None = None
        for port in self._pending.values():
            d = port.vm.deadline
            if d is not None and (best is None or d < best):
                best = d
        for rec in self._draining.values():
            d = rec.drain_deadline
            if d is not None and (best is None or d < best):
                best = d
        return best

    def _vmotion_busy(self, source: object) -> bool:
        """No room for another vMotion from ``source``: its own cap, or the total cap
        once it already has one (a source's first is never refused for others')."""
        own = self._by_source.get(source, 0)
        if own >= self.max_vmotions_per_source:
            return True
        total = len(self._pending) >= self.max_concurrent_vmotions
        return total and (own > 0 or self.max_concurrent_vmotions == 0)

    # ---- carrying out the table's effects

    def _apply(self, port: PortRec, step: Step, out: list[Action], now: float) -> None:
        """Carry out the effects of one table transition."""
        for eff in step.effects:
            kind = _LOG_KIND.get(eff)
            if kind is not None:
                out.append(PortEvent(port.key, kind, _detail(step), step.conn))
            elif eff in _BOOKKEEPING:
                self._keep_books(port, eff, step)
            elif eff not in _NO_OP:
                self._carry_out(port, eff, step, out, now)
        if step.state_before is not State.IDLE and step.state_after is State.IDLE:
            out.append(VMotionSettled(port.key, _OUTCOME[step.input]))
            self._settled = True
            self._resolve_waiting(port, out)

    def _keep_books(self, port: PortRec, eff: Effect, step: Step) -> None:
        key = port.key
        if eff is Effect.START:
            assert step.after is not None
            self._pending[key] = port
            self._cookies[step.after.cookie] = key
            port.vm_source = self._conns[step.conn].source
            self._by_source[port.vm_source] = self._by_source.get(port.vm_source, 0) + 1
        elif eff is Effect.CLEAR:
            assert step.before is not None
            self._pending.pop(key, None)
            self._cookies.pop(step.before.cookie, None)
            self._uncount_source(port)
        elif eff is Effect.SET_DEST:
            rec = self._conns[step.conn]
            if rec.key is None:
                rec.key = key
                rec.role = Role.WAITING
                port.waiting = added(port.waiting, rec)
                self._deferred.pop(rec.conn, None)  # bound by its cookie

    def _carry_out(
        self, port: PortRec, eff: Effect, step: Step, out: list[Action], now: float
    ) -> None:
        before, after = step.before, step.after
        if eff is Effect.SEND_GOAHEAD:
            assert after is not None
            out.append(SendGoahead(step.conn, after.seq, after.secret))
        elif eff is Effect.SEND_NOTNOW:
            out.append(SendNotNow(step.conn, step.seq))
        elif eff is Effect.SEND_PEER_OK:
            rec_p = step.record
            assert rec_p is not None
            out.append(SendPeerOk(step.conn, rec_p.seq))
        elif eff is Effect.SWITCH_TO_DEST:
            assert before is not None
            self._switch(port, before, out, now)
        elif eff is Effect.CLOSE_DEST:
            assert before is not None and before.dest is not None
            dest = self._conns.get(before.dest)
            if dest is not None and dest.role is Role.WAITING:
                port.waiting.remove(dest)
                why = "vMotion expired" if step.input is Input.EXPIRE else "vMotion aborted"
                self._make_outcast(port, dest, why, out)
        else:
            raise AssertionError(f"unhandled vMotion effect {eff}")

    def _uncount_source(self, port: PortRec) -> None:
        src = port.vm_source
        n = self._by_source.get(src, 0) - 1
        if n > 0:
            self._by_source[src] = n
        else:
            self._by_source.pop(src, None)
        port.vm_source = None

    def _switch(self, port: PortRec, before: Pending, out: list[Action], now: float) -> None:
        assert before.dest is not None
        dest = self._conns[before.dest]
        src = port.carrier
        if src is not None:
            self._drop_carrier(port)
            self._make_drain(port, src, deadline=now + self.vmotion_timeout)
        port.waiting.remove(dest)
        self._make_carrier(port, dest)
        self._refuse_contenders(port, "the VM moved (vMotion complete)", out)

    def _resolve_waiting(self, port: PortRec, out: list[Action]) -> None:
        """The vMotion settled: connections still waiting lose, unless the port has no carrier."""
        if not port.waiting:
            return
        promote: ConnRec | None = None
        if port.carrier is None:
            live = [w for w in port.waiting if not w.close_sent]
            if live:
                promote = live[-1]
        waiting, port.waiting = port.waiting, NO_RECS
        for w in waiting:
            if w is promote:
                self._make_carrier(port, w)
                out.append(
                    PortEvent(port.key, EventKind.IDENTITY, "carrier (vMotion settled)", w.conn)
                )
            else:
                self._make_outcast(port, w, "vMotion settled without this connection", out)

    # ---- identity deferral

    def _defer(self, conn: Conn, uuid: str) -> bool:
        """Defer ``conn``'s identity if a vMotion of ``uuid`` is pending."""
        if not self.vmotion_pending_for(uuid):
            return False
        self._deferred[conn] = uuid
        return True

    def _resolve_deferred(self, out: list[Action]) -> None:
        """vMotions settled: a deferred connection no vMotion took is a plain VM connection."""
        if not self._settled:
            return
        self._settled = False
        for conn, uuid in list(self._deferred.items()):
            rec = self._conns.get(conn)
            if rec is not None and rec.key is not None:
                del self._deferred[conn]
            elif not self.vmotion_pending_for(uuid):
                del self._deferred[conn]
                out.append(IdentityReady(conn, PortKey(uuid, DEFAULT_LABEL)))
