"""Which connection carries which port: the switchboard's carriers and their bytes.

The base of ``vspc.core.switchboard.Switchboard`` (sans-IO): the connection and port
records, the roles a connection moves through (carrier, drain, waiting, outcast,
contender), takeovers and contention between connections for one port, and when
held bytes may flow (``_settle``). The vMotion side is ``vspc.core.port_vmotions``.
"""

from __future__ import annotations

from common.proto.vmotion import State
from vspc.core.board_actions import (
    Action,
    CloseConn,
    Conn,
    Deliver,
    Dropped,
    EventKind,
    PortEvent,
    ProbeConn,
    ResumeReading,
    RoomAvailable,
    SendData,
)
from vspc.core.board_records import NO_BYTES, NO_RECS, ConnRec, PortRec, Role, added
from vspc.core.identity import PortKey


class CarrierTable:
    def __init__(self, *, to_vm_buffer_limit: int, from_vm_hold_limit: int) -> None:
        self.to_vm_buffer_limit = to_vm_buffer_limit
        self.from_vm_hold_limit = from_vm_hold_limit
        self._conns: dict[Conn, ConnRec] = {}
        self._ports: dict[PortKey, PortRec] = {}
        self._draining: dict[Conn, ConnRec] = {}  # drains with a deadline, not yet closed
        self._carried = 0  # ports whose carrier is not None

    # ---- introspection

    def carrier(self, key: PortKey) -> Conn | None:
        port = self._ports.get(key)
        if port is None or port.carrier is None:
            return None
        return port.carrier.conn

    def carried_ports(self) -> int:
        """How many ports have a carrier (O(1): kept up to date, for metrics)."""
        return self._carried

    def port_of(self, conn: Conn) -> PortKey | None:
        rec = self._conns.get(conn)
        return None if rec is None else rec.key

    def ports(self) -> list[PortKey]:
        return list(self._ports)

    def connections(self) -> list[Conn]:
        return list(self._conns)

    def to_vm_buffered(self, key: PortKey) -> int:
        port = self._ports.get(key)
        return 0 if port is None else len(port.to_vm_buf)

    def from_vm_held(self, conn: Conn) -> int:
        rec = self._conns.get(conn)
        return 0 if rec is None else len(rec.held)

    def to_vm_room(self, key: PortKey) -> int:
        """How many bytes ``to_vm(key, ...)`` accepts now (0: wait for RoomAvailable)."""
        port = self._ports.get(key)
        if port is None or self._direct_to_vm(port):
            return self.to_vm_buffer_limit
        return max(0, self.to_vm_buffer_limit - len(port.to_vm_buf))

    def from_vm_room(self, conn: Conn) -> int:
        """How many more bytes to read from ``conn`` now (0: wait for ResumeReading)."""
        rec = self._conns.get(conn)
        if rec is None or self._direct_from_vm(rec):
            return self.from_vm_hold_limit
        return max(0, self.from_vm_hold_limit - len(rec.held))

    # ---- takeover contention: the outcome of a carrier's liveness probe

    def probe_answered(self, conn: Conn) -> list[Action]:
        """``conn`` answered a liveness probe: contenders for its port are refused."""
        rec = self._conns.get(conn)
        if rec is None or rec.key is None or rec.role is not Role.CARRIER:
            return []
        port = self._ports[rec.key]
        out: list[Action] = []
        self._refuse_contenders(port, "the connected carrier answered a liveness probe", out)
        self._settle(port, out)
        return out

    def probe_failed(self, conn: Conn, now: float) -> list[Action]:
        """``conn`` did not answer a liveness probe in time: the newest contender (if
        any) takes its port over and ``conn`` is closed."""
        rec = self._conns.get(conn)
        if rec is None or rec.key is None or rec.role is not Role.CARRIER:
            return []
        port = self._ports[rec.key]
        out: list[Action] = []
        winner = self._pop_contender(port)
        if winner is not None:
            self._refuse_contenders(port, "another connection took over the port", out)
            self._take_over(
                port,
                winner,
                "the old carrier failed a liveness probe",
                out,
                "did not answer a liveness probe; another connection took over",
            )
            self._settle(port, out)
        return out

    # ---- records, roles, takeovers

    def _rec(self, conn: Conn) -> ConnRec:
        rec = self._conns.get(conn)
        if rec is None:
            rec = self._conns[conn] = ConnRec(conn)
        return rec

    def _port(self, key: PortKey) -> PortRec:
        port = self._ports.get(key)
        if port is None:
            port = self._ports[key] = PortRec(key)
        return port

    @staticmethod
    def _direct_to_vm(port: PortRec) -> bool:
        return port.vm.state is State.IDLE and port.carrier is not None

    def _direct_from_vm(self, rec: ConnRec) -> bool:
        if rec.role is Role.OUTCAST:
            return True
        if rec.role in (Role.CARRIER, Role.DRAIN) and rec.key is not None:
            return self._ports[rec.key].head() is rec
        return False

    def _take_over(
        self,
        port: PortRec,
        rec: ConnRec,
        why: str,
        out: list[Action],
        close_reason: str = "superseded by a newer connection for the same port",
    ) -> None:
        """``rec`` becomes the carrier of ``port``; the old carrier drains and is closed."""
        old = port.carrier
        assert old is not None
        self._drop_carrier(port)
        self._make_drain(port, old, deadline=None)
        self._close(old, close_reason, out)
        self._make_carrier(port, rec)
        out.append(PortEvent(port.key, EventKind.IDENTITY, "carrier", rec.conn))
        out.append(PortEvent(port.key, EventKind.TAKEOVER, why, rec.conn))

    def _contend(self, port: PortRec, rec: ConnRec, out: list[Action]) -> None:
        """``rec`` claims a carried port from another source: probe the carrier first."""
        assert port.carrier is not None
        rec.role = Role.CONTENDER
        port.contenders = added(port.contenders, rec)
        out.append(ProbeConn(port.carrier.conn))
        out.append(
            PortEvent(
                port.key,
                EventKind.TAKEOVER_PROBE,
                "claimed from another source; probing the connected carrier",
                rec.conn,
            )
        )

    def _pop_contender(self, port: PortRec) -> ConnRec | None:
        """The newest contender still open, taken out of the port's list."""
        for rec in reversed(port.contenders):
            if not rec.close_sent:
                port.contenders.remove(rec)
                return rec
        return None

    def _promote_contender(self, port: PortRec, out: list[Action]) -> None:
        """The carrier closed: the newest contender carries the port, the rest are refused."""
        winner = self._pop_contender(port)
        if winner is None:
            return
        self._refuse_contenders(port, "another connection took over the port", out)
        self._make_carrier(port, winner)
        out.append(
            PortEvent(port.key, EventKind.IDENTITY, "carrier (old carrier closed)", winner.conn)
        )

    def _refuse_contenders(self, port: PortRec, why: str, out: list[Action]) -> None:
        """Close every contender; their bytes never reach the port's console."""
        contenders, port.contenders = port.contenders, NO_RECS
        for rec in contenders:
            rec.key, rec.role = None, Role.UNBOUND
            if rec.held:
                out.append(Dropped(rec.conn, bytes(rec.held), "takeover refused"))
                rec.held = NO_BYTES
            rec.paused = False
            if not rec.close_sent:
                out.append(PortEvent(port.key, EventKind.TAKEOVER_REFUSED, why, rec.conn))
            self._close(rec, f"takeover refused: {why}", out)

    def _make_carrier(self, port: PortRec, rec: ConnRec) -> None:
        rec.role = Role.CARRIER
        if port.carrier is None:
            self._carried += 1
        port.carrier = rec

    def _drop_carrier(self, port: PortRec) -> None:
        if port.carrier is not None:
            port.carrier = None
            self._carried -= 1

    def _make_drain(self, port: PortRec, rec: ConnRec, deadline: float | None) -> None:
        rec.role = Role.DRAIN
        rec.drain_deadline = deadline
        port.drains = added(port.drains, rec)
        if deadline is not None and not rec.close_sent:
            self._draining[rec.conn] = rec

    def _make_outcast(self, port: PortRec, rec: ConnRec, reason: str, out: list[Action]) -> None:
        rec.role = Role.OUTCAST
        port.outcasts = added(port.outcasts, rec)
        self._flush_held(port, rec, out)
        self._close(rec, reason, out)

    def _close(self, rec: ConnRec, reason: str, out: list[Action]) -> None:
        if not rec.close_sent and not rec.closed:
            rec.close_sent = True
            out.append(CloseConn(rec.conn, reason))
        self._draining.pop(rec.conn, None)

    def _flush_held(self, port: PortRec, rec: ConnRec, out: list[Action]) -> None:
        if rec.held:
            out.append(Deliver(port.key, bytes(rec.held)))
            rec.held = NO_BYTES
        if rec.paused:
            rec.paused = False
            if not rec.closed:
                out.append(ResumeReading(rec.conn))

    def _settle(self, port: PortRec, out: list[Action]) -> None:
        """Flush what may flow now; forget the port if nothing is left of it."""
        if port.to_vm_buf and self._direct_to_vm(port):
            assert port.carrier is not None
            out.append(SendData(port.carrier.conn, bytes(port.to_vm_buf)))
            port.to_vm_buf = NO_BYTES
            if port.to_vm_full:
                port.to_vm_full = False
                out.append(RoomAvailable(port.key))
        while port.drains:
            head = port.drains[0]
            self._flush_held(port, head, out)
            if not head.closed:
                break
            port.drains.pop(0)
        else:
            if port.carrier is not None:
                self._flush_held(port, port.carrier, out)
        if port.empty():
            del self._ports[port.key]
