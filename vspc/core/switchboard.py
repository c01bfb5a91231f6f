"""The switchboard: which ESX connection carries which VM serial port, across vMotion.

Sans-IO and cross-port: the trio vSPC service feeds it what happened (a connection
opened, identified itself, sent VMOTION-* commands or console bytes, closed; an
attached console client typed something; time passed) and carries out the
``Action``s each call returns, in order. Nothing here blocks, reads a clock or
draws randomness: ``now`` (seconds, any monotonic origin) and the GOAHEAD secret
come in as arguments. The per-port vMotion logic is the table in ``common.proto.vmotion``.

Connections are opaque hashable tokens (``Conn``); ports are ``PortKey``s.

Calls (each returns ``list[Action]`` unless noted)::

    sb = Switchboard(vmotion_timeout=30.0, max_concurrent_vmotions=64,
                     to_vm_buffer_limit=256 * 1024)
    sb.connection_opened(conn, source)    # PortEvent(connect); source: the peer's address
    sb.identified(conn, key, now)         # VM-VC-UUID (+ label) known: conn carries key
    sb.begin(conn, seq, secret, now)      # VMOTION-BEGIN; secret = os.urandom(SECRET_SIZE)
    sb.peer(conn, cookie, now)            # VMOTION-PEER; cookie = seq + secret as received
    sb.complete(conn, seq, now)           # VMOTION-COMPLETE
    sb.abort(conn, now)                   # VMOTION-ABORT
    sb.connection_closed(conn, now)       # the connection is gone (EOF, error, or our CloseConn)
    sb.probe_answered(conn)               # a liveness probe (ProbeConn) was answered
    sb.probe_failed(conn, now)            # ... or not, in time: the connection is dead
    sb.from_vm(conn, data)                # console bytes the VM wrote (Telnet-decoded)
    sb.to_vm(key, data)                   # bytes for the VM; at most to_vm_room(key) of them
    sb.tick(now)                          # call at next_deadline(); expires vMotions
    sb.next_deadline() -> float | None
    sb.to_vm_room(key) -> int ; sb.from_vm_room(conn) -> int
    sb.carrier(key), sb.port_of(conn), sb.ports(), sb.pending_vmotions()
    sb.carried_ports() -> int             # ports with a carrier, O(1)

Actions: ``SendData`` / ``SendGoahead`` / ``SendNotNow`` / ``SendPeerOk`` (write to an
ESX connection), ``Deliver`` (console bytes to the port's console), ``CloseConn``
(close that connection, then call ``connection_closed``), ``PortEvent`` (log it,
write it to the console's event log when ``key`` is set, count it), ``RoomAvailable``
(a full to-VM buffer drained: writers waiting on ``to_vm_room`` may go on),
``ResumeReading`` (a connection whose held bytes were full may be read again),
``Dropped`` (bytes of a connection that closed before it ever had an identity),
``ProbeConn`` (ask that connection for proof of life; report the outcome with
``probe_answered`` / ``probe_failed``).

Metrics: count ``PortEvent`` kinds; the vMotion outcomes are ``vmotion_complete``,
``vmotion_abort``, ``vmotion_expire``, ``vmotion_notnow`` and ``peer_refused``. Time
BEGIN->GOAHEAD around ``begin`` plus the write of ``SendGoahead``.

Rules the adapter relies on:

* A connection becomes a port's *carrier* when it identifies. If the port already
  has a live carrier and no vMotion is pending, a newer connection from the same
  source address takes over at once (``PortEvent(takeover)``; ESX reconnecting) and
  the old one is closed (``CloseConn``). One from another source only *contends*:
  the carrier is probed (``ProbeConn``); if it answers, every contender is closed
  (``PortEvent(takeover_refused)``) and the carrier keeps the port and its input; if
  it fails the probe or closes, the newest contender takes over. While a vMotion
  is pending, an identifying connection waits (it is usually the destination, which
  may send its UUID before PEER); when the vMotion settles it is closed, or becomes
  the carrier if the port then has none.
* ``begin`` answers at once: ``SendGoahead`` or ``SendNotNow`` (a vMotion already
  pending on that port, the sender's source address already has
  ``max_vmotions_per_source`` pending, or the sender is not the port's carrier /
  has no identity yet). ``max_concurrent_vmotions`` caps the total, but never a
  source's first pending vMotion: one source's BEGINs never refuse another's
  first one.
* ``peer`` binds a connection to a port only through the exact cookie of a pending
  vMotion; DO-PROXY and UUID play no part. Anything else is refused and logged.
* ``complete`` switches the port to the destination. The source keeps draining:
  bytes it still sends are delivered before any of the destination's, which are
  held until the source closes (or is closed ``vmotion_timeout`` after COMPLETE).
* VM->appliance: ``from_vm`` never refuses bytes (the adapter already read them).
  Bytes that must wait (no identity yet, behind a draining source, a destination
  before COMPLETE) are held per connection; ``from_vm_room(conn)`` is 0 when the
  held bytes reach the limit: stop reading that connection until ``ResumeReading``.
  The overshoot is at most one read.
* Appliance->VM: ``to_vm`` sends straight to the carrier when no vMotion is pending;
  from BEGIN until COMPLETE/ABORT/expiry, or while the port has no carrier, bytes
  wait in a buffer of ``to_vm_buffer_limit`` bytes, flushed by the very call that
  settles it. ``to_vm`` raises ``BufferFull`` if given more than ``to_vm_room(key)``;
  when the room is 0 wait for ``RoomAvailable(key)``. Nothing is ever dropped.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TypeAlias

from common.proto.vmotion import SECRET_SIZE, Effect, Input, Pending, PortVMotion, State, Step
from vspc.core.identity import PortKey

__all__ = [
    "SECRET_SIZE",
    "Action",
    "BufferFull",
    "CloseConn",
    "Conn",
    "Deliver",
    "Dropped",
    "EventKind",
    "PortEvent",
    "ProbeConn",
    "ResumeReading",
    "RoomAvailable",
    "SendData",
    "SendGoahead",
    "SendNotNow",
    "SendPeerOk",
    "Switchboard",
    "VMotionInfo",
]

Conn = Hashable


class EventKind(enum.StrEnum):
    CONNECT = "connect"
    IDENTITY = "identity"
    IDENTITY_CONFLICT = "identity_conflict"
    TAKEOVER = "takeover"
    TAKEOVER_PROBE = "takeover_probe"
    TAKEOVER_REFUSED = "takeover_refused"
    VMOTION_BEGIN = "vmotion_begin"
    VMOTION_NOTNOW = "vmotion_notnow"
    VMOTION_PEER = "vmotion_peer"
    PEER_REFUSED = "peer_refused"
    VMOTION_COMPLETE = "vmotion_complete"
    COMPLETE_REFUSED = "complete_refused"
    VMOTION_ABORT = "vmotion_abort"
    ABORT_IGNORED = "abort_ignored"
    VMOTION_EXPIRE = "vmotion_expire"
    SOURCE_CLOSED = "vmotion_source_closed"
    DEST_CLOSED = "vmotion_dest_closed"
    DRAIN_TIMEOUT = "drain_timeout"
    DISCONNECT = "disconnect"


# ---- actions


@dataclass(frozen=True, slots=True)
class SendData:
    """Write console bytes to the VM over ``conn`` (Telnet-encode them)."""

    conn: Conn
    data: bytes


@dataclass(frozen=True, slots=True)
class SendGoahead:
    conn: Conn
    seq: bytes
    secret: bytes


@dataclass(frozen=True, slots=True)
class SendNotNow:
    conn: Conn
    seq: bytes


@dataclass(frozen=True, slots=True)
class SendPeerOk:
    conn: Conn
    seq: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """Console bytes from the VM, for the port's console, in order."""

    key: PortKey
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseConn:
    """Close ``conn``; call ``connection_closed(conn)`` once it is closed."""

    conn: Conn
    reason: str


@dataclass(frozen=True, slots=True)
class PortEvent:
    """Something to log / put in the console's event log (``key`` None: no port yet)."""

    key: PortKey | None
    kind: EventKind
    detail: str
    conn: Conn | None = None


@dataclass(frozen=True, slots=True)
class RoomAvailable:
    """The to-VM buffer of ``key`` was full and has drained."""

    key: PortKey


@dataclass(frozen=True, slots=True)
class ResumeReading:
    """Held bytes of ``conn`` were full and have been delivered: read it again."""

    conn: Conn


@dataclass(frozen=True, slots=True)
class Dropped:
    """Bytes from a connection that closed before it had any identity (nowhere to go)."""

    conn: Conn
    data: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class ProbeConn:
    """Ask ``conn`` for proof of life (a takeover from another source is waiting)."""

    conn: Conn


Action: TypeAlias = (
    SendData
    | SendGoahead
    | SendNotNow
    | SendPeerOk
    | Deliver
    | CloseConn
    | PortEvent
    | RoomAvailable
    | ResumeReading
    | Dropped
    | ProbeConn
)


class BufferFull(Exception):
    """``to_vm`` was given more bytes than ``to_vm_room`` allowed."""

    def __init__(self, key: PortKey, room: int, size: int) -> None:
        super().__init__(f"{key}: {size} bytes offered, room for {room}")
        self.key, self.room, self.size = key, room, size


@dataclass(frozen=True, slots=True)
class VMotionInfo:
    key: PortKey
    state: State
    seq: bytes
    source: Conn | None
    dest: Conn | None
    started: float
    deadline: float


# ---- internal records


class _Role(enum.Enum):
    UNBOUND = "unbound"  # no identity yet
    CARRIER = "carrier"  # carries its port
    DRAIN = "drain"  # a former carrier, still open: its bytes come first
    WAITING = "waiting"  # bound to a port with a pending vMotion, not (yet) the carrier
    OUTCAST = "outcast"  # a destination/candidate that lost; being closed
    CONTENDER = "contender"  # claims a carried port from another source: waits for a probe


# Thousands of ports and connections are live at once, most of them with nothing
# held, draining or waiting: their empty lists and buffers are these shared,
# never-mutated objects until first used (``_added``, ``_grown``).
_NO_RECS: list[_ConnRec] = []
_NO_BYTES = bytearray()


def _no_recs() -> list[_ConnRec]:
    return _NO_RECS


def _no_bytes() -> bytearray:
    return _NO_BYTES


def _added(recs: list[_ConnRec], rec: _ConnRec) -> list[_ConnRec]:
    """``recs`` with ``rec`` appended (a new list in place of the shared empty one)."""
    if recs is _NO_RECS:
        return [rec]
    recs.append(rec)
    return recs


def _grown(buf: bytearray, data: bytes) -> bytearray:
    """``buf`` with ``data`` appended (a new buffer in place of the shared empty one)."""
    if buf is _NO_BYTES:
        return bytearray(data)
    buf += data
    return buf


@dataclass(slots=True, eq=False)
class _ConnRec:
    conn: Conn
    source: object = None  # the peer's address: takeovers from the same one are ESX reconnecting
    key: PortKey | None = None
    role: _Role = _Role.UNBOUND
    held: bytearray = field(default_factory=_no_bytes)
    paused: bool = False  # from_vm_room hit 0: owes a ResumeReading
    closed: bool = False  # gone; kept only as a placeholder in a port's drain order
    close_sent: bool = False
    drain_deadline: float | None = None


@dataclass(slots=True, eq=False)
class _Port:
    key: PortKey
    vm: PortVMotion = field(default_factory=PortVMotion)
    carrier: _ConnRec | None = None
    drains: list[_ConnRec] = field(default_factory=_no_recs)  # oldest first; head delivers
    waiting: list[_ConnRec] = field(default_factory=_no_recs)
    outcasts: list[_ConnRec] = field(default_factory=_no_recs)
    contenders: list[_ConnRec] = field(default_factory=_no_recs)  # oldest first
    vm_source: object = None  # source address of the pending vMotion's BEGIN
    to_vm_buf: bytearray = field(default_factory=_no_bytes)
    to_vm_full: bool = False  # owes a RoomAvailable

    def head(self) -> _ConnRec | None:
        """The connection whose bytes are delivered now (others of the port wait)."""
        return self.drains[0] if self.drains else self.carrier

    def empty(self) -> bool:
        return (
            self.carrier is None
            and not self.drains
            and not self.waiting
            and not self.outcasts
            and not self.contenders
            and self.vm.state is State.IDLE
            and not self.to_vm_buf
        )


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


class Switchboard:
    def __init__(
        self,
        *,
        vmotion_timeout: float,
        max_concurrent_vmotions: int,
        to_vm_buffer_limit: int,
        from_vm_hold_limit: int | None = None,
        max_vmotions_per_source: int = 8,
    ) -> None:
        if vmotion_timeout <= 0:
            raise ValueError("vmotion_timeout must be > 0")
        if max_concurrent_vmotions < 0:
            raise ValueError("max_concurrent_vmotions must be >= 0")
        if to_vm_buffer_limit <= 0:
            raise ValueError("to_vm_buffer_limit must be > 0")
        if max_vmotions_per_source < 0:
            raise ValueError("max_vmotions_per_source must be >= 0")
        self.vmotion_timeout = vmotion_timeout
        self.max_concurrent_vmotions = max_concurrent_vmotions
        self.max_vmotions_per_source = max_vmotions_per_source
        self._by_source: dict[object, int] = {}  # pending vMotions per BEGIN source address
        self.to_vm_buffer_limit = to_vm_buffer_limit
        self.from_vm_hold_limit = (
            to_vm_buffer_limit if from_vm_hold_limit is None else from_vm_hold_limit
        )
        self._conns: dict[Conn, _ConnRec] = {}
        self._ports: dict[PortKey, _Port] = {}
        self._pending: dict[PortKey, _Port] = {}  # ports whose vMotion is not IDLE
        self._cookies: dict[bytes, PortKey] = {}  # seq + secret -> port
        self._draining: dict[Conn, _ConnRec] = {}  # drains with a deadline, not yet closed
        self._carried = 0  # ports whose carrier is not None

    # ---- reconfiguration (SIGHUP): applies to what starts from now on

    def reconfigure(
        self,
        *,
        vmotion_timeout: float | None = None,
        max_concurrent_vmotions: int | None = None,
        max_vmotions_per_source: int | None = None,
    ) -> None:
        if max_vmotions_per_source is not None:
            if max_vmotions_per_source < 0:
                raise ValueError("max_vmotions_per_source must be >= 0")
            self.max_vmotions_per_source = max_vmotions_per_source
        if vmotion_timeout is not None:
            if vmotion_timeout <= 0:
                raise ValueError("vmotion_timeout must be > 0")
            self.vmotion_timeout = vmotion_timeout
        if max_concurrent_vmotions is not None:
            if max_concurrent_vmotions < 0:
                raise ValueError("max_concurrent_vmotions must be >= 0")
            self.max_concurrent_vmotions = max_concurrent_vmotions

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

    def pending_vmotions(self) -> list[VMotionInfo]:
        out = []
        for key, port in self._pending.items():
            p = port.vm.pending
            assert p is not None
            out.append(
                VMotionInfo(key, port.vm.state, p.seq, p.source, p.dest, p.started, p.deadline)
            )
        return out

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

    # ---- connection lifecycle

    def connection_opened(self, conn: Conn, source: object = None) -> list[Action]:
        self._rec(conn).source = source
        return [PortEvent(None, EventKind.CONNECT, "", conn)]

    def identified(self, conn: Conn, key: PortKey, now: float) -> list[Action]:
        """``conn`` told us which port it carries (VM-VC-UUID and label)."""
        rec = self._rec(conn)
        if rec.key is not None:
            if rec.key == key:
                return []
            return [
                PortEvent(
                    rec.key,
                    EventKind.IDENTITY_CONFLICT,
                    f"connection already bound to this port; ignored identity {key}",
                    conn,
                )
            ]
        out: list[Action] = []
        port = self._port(key)
        rec.key = key
        if port.vm.state is not State.IDLE:
            rec.role = _Role.WAITING
            port.waiting = _added(port.waiting, rec)
            out.append(
                PortEvent(
                    key, EventKind.IDENTITY, "waiting: a vMotion is pending on this port", conn
                )
            )
        elif port.carrier is None:
            self._make_carrier(port, rec)
            out.append(PortEvent(key, EventKind.IDENTITY, "carrier", conn))
        elif port.carrier.source == rec.source or port.carrier.close_sent:
            self._take_over(port, rec, "newer connection took over the port", out)
        else:
            self._contend(port, rec, out)
        self._settle(port, out)
        return out

    def probe_answered(self, conn: Conn) -> list[Action]:
        """``conn`` answered a liveness probe: contenders for its port are refused."""
        rec = self._conns.get(conn)
        if rec is None or rec.key is None or rec.role is not _Role.CARRIER:
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
        if rec is None or rec.key is None or rec.role is not _Role.CARRIER:
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

    def connection_closed(self, conn: Conn, now: float) -> list[Action]:  # noqa: C901
        """``conn`` is closed (any cause). Unknown or repeated calls are ignored."""
        rec = self._conns.pop(conn, None)
        if rec is None:
            return []
        rec.closed = True
        self._draining.pop(conn, None)
        out: list[Action] = []
        if rec.key is None:
            if rec.held:
                out.append(Dropped(conn, bytes(rec.held), "closed before any identity"))
                rec.held = _NO_BYTES
            out.append(PortEvent(None, EventKind.DISCONNECT, "", conn))
            return out
        port = self._ports[rec.key]
        out.append(PortEvent(port.key, EventKind.DISCONNECT, rec.role.value, conn))
        step = port.vm.closed(conn)
        if step is not None:
            self._apply(port, step, out, now)
        role = rec.role
        if role is _Role.CARRIER:
            self._drop_carrier(port)
            if rec.held:  # waiting behind drains: keep its place in the order
                port.drains = _added(port.drains, rec)
            self._promote_contender(port, out)
        elif role is _Role.CONTENDER:
            port.contenders.remove(rec)
            if rec.held:
                out.append(Dropped(conn, bytes(rec.held), "contender closed"))
                rec.held = _NO_BYTES
        elif role is _Role.DRAIN:
            if not rec.held:
                port.drains.remove(rec)
        elif role is _Role.WAITING:
            port.waiting.remove(rec)
            self._flush_held(port, rec, out)
        elif role is _Role.OUTCAST:
            port.outcasts.remove(rec)
        self._settle(port, out)
        return out

    # ---- vMotion commands

    def begin(self, conn: Conn, seq: bytes, secret: bytes, now: float) -> list[Action]:
        """VMOTION-BEGIN(seq) from ``conn``; ``secret`` is fresh random bytes for GOAHEAD."""
        if not secret:
            raise ValueError("the GOAHEAD secret must not be empty")
        rec = self._rec(conn)
        if rec.key is None:
            return [
                SendNotNow(conn, seq),
                PortEvent(
                    None,
                    EventKind.VMOTION_NOTNOW,
                    f"seq={seq.hex()}; BEGIN from a connection without identity",
                    conn,
                ),
            ]
        port = self._ports[rec.key]
        busy = self._vmotion_busy(rec.source) or (seq + secret) in self._cookies
        step = port.vm.begin(
            conn,
            seq,
            secret,
            now,
            self.vmotion_timeout,
            is_carrier=port.carrier is rec,
            busy=busy,
        )
        out: list[Action] = []
        self._apply(port, step, out, now)
        self._settle(port, out)
        return out

    def peer(self, conn: Conn, cookie: bytes, now: float) -> list[Action]:
        """VMOTION-PEER(cookie) from ``conn``: cookie must be a pending seq + secret exactly."""
        rec = self._rec(conn)
        key = self._cookies.get(cookie)
        if key is None:
            for port in self._pending.values():
                p = port.vm.pending
                if p is not None and cookie.startswith(p.seq):
                    out: list[Action] = []
                    self._apply(port, port.vm.peer(conn, cookie, eligible=False), out, now)
                    return out
            return [
                PortEvent(
                    None,
                    EventKind.PEER_REFUSED,
                    f"cookie={cookie.hex()}; no pending vMotion with this sequence",
                    conn,
                )
            ]
        port = self._ports[key]
        eligible = not rec.close_sent and (
            rec.key is None or (rec.key == key and rec.role is _Role.WAITING)
        )
        out = []
        self._apply(port, port.vm.peer(conn, cookie, eligible=eligible), out, now)
        self._settle(port, out)
        return out

    def complete(self, conn: Conn, seq: bytes, now: float) -> list[Action]:
        """VMOTION-COMPLETE(seq) from ``conn``."""
        rec = self._rec(conn)
        if rec.key is None:
            return [
                PortEvent(
                    None,
                    EventKind.COMPLETE_REFUSED,
                    f"seq={seq.hex()}; COMPLETE from a connection without identity",
                    conn,
                )
            ]
        port = self._ports[rec.key]
        out: list[Action] = []
        self._apply(port, port.vm.complete(conn, seq), out, now)
        self._settle(port, out)
        return out

    def abort(self, conn: Conn, now: float) -> list[Action]:
        """VMOTION-ABORT from ``conn``."""
        rec = self._rec(conn)
        if rec.key is None:
            return [
                PortEvent(
                    None, EventKind.ABORT_IGNORED, "ABORT from a connection without identity", conn
                )
            ]
        port = self._ports[rec.key]
        out: list[Action] = []
        self._apply(port, port.vm.abort(conn), out, now)
        self._settle(port, out)
        return out

    def tick(self, now: float) -> list[Action]:
        """Expire vMotions and drains whose deadline is ``<= now``."""
        out: list[Action] = []
        for port in list(self._pending.values()):
            step = port.vm.expire(now)
            if step is not None:
                self._apply(port, step, out, now)
                self._settle(port, out)
        for rec in list(self._draining.values()):
            if rec.drain_deadline is not None and rec.drain_deadline <= now:
                del self._draining[rec.conn]
                rec.drain_deadline = None
                assert rec.key is not None
                out.append(
                    PortEvent(
                        rec.key,
                        EventKind.DRAIN_TIMEOUT,
                        "source still open after vMotion complete; closing it",
                        rec.conn,
                    )
                )
                self._close(rec, "vMotion complete; source did not close", out)
        return out

    # ---- data

    def from_vm(self, conn: Conn, data: bytes) -> list[Action]:
        """Console bytes ``conn`` received from the VM (Telnet-decoded)."""
        if not data:
            return []
        rec = self._rec(conn)
        if self._direct_from_vm(rec):
            assert rec.key is not None
            return [Deliver(rec.key, bytes(data))]
        rec.held = _grown(rec.held, data)
        if len(rec.held) >= self.from_vm_hold_limit:
            rec.paused = True
        return []

    def to_vm(self, key: PortKey, data: bytes) -> list[Action]:
        """Bytes for the VM on port ``key``; at most ``to_vm_room(key)`` of them."""
        if not data:
            return []
        port = self._ports.get(key)
        if port is not None and self._direct_to_vm(port):
            assert port.carrier is not None
            return [SendData(port.carrier.conn, bytes(data))]
        room = self.to_vm_room(key)
        if len(data) > room:
            raise BufferFull(key, room, len(data))
        if port is None:
            port = self._port(key)
        port.to_vm_buf = _grown(port.to_vm_buf, data)
        if len(port.to_vm_buf) >= self.to_vm_buffer_limit:
            port.to_vm_full = True
        return []

    # ---- internals

    def _rec(self, conn: Conn) -> _ConnRec:
        rec = self._conns.get(conn)
        if rec is None:
            rec = self._conns[conn] = _ConnRec(conn)
        return rec

    def _port(self, key: PortKey) -> _Port:
        port = self._ports.get(key)
        if port is None:
            port = self._ports[key] = _Port(key)
        return port

    @staticmethod
    def _direct_to_vm(port: _Port) -> bool:
        return port.vm.state is State.IDLE and port.carrier is not None

    def _direct_from_vm(self, rec: _ConnRec) -> bool:
        if rec.role is _Role.OUTCAST:
            return True
        if rec.role in (_Role.CARRIER, _Role.DRAIN) and rec.key is not None:
            return self._ports[rec.key].head() is rec
        return False

    def _vmotion_busy(self, source: object) -> bool:
        """No room for another vMotion from ``source``: its own cap, or the total cap
        once it already has one (a source's first is never refused for others')."""
        own = self._by_source.get(source, 0)
        if own >= self.max_vmotions_per_source:
            return True
        total = len(self._pending) >= self.max_concurrent_vmotions
        return total and (own > 0 or self.max_concurrent_vmotions == 0)

    def _take_over(
        self,
        port: _Port,
        rec: _ConnRec,
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

    def _contend(self, port: _Port, rec: _ConnRec, out: list[Action]) -> None:
        """``rec`` claims a carried port from another source: probe the carrier first."""
        assert port.carrier is not None
        rec.role = _Role.CONTENDER
        port.contenders = _added(port.contenders, rec)
        out.append(ProbeConn(port.carrier.conn))
        out.append(
            PortEvent(
                port.key,
                EventKind.TAKEOVER_PROBE,
                "claimed from another source; probing the connected carrier",
                rec.conn,
            )
        )

    def _pop_contender(self, port: _Port) -> _ConnRec | None:
        """The newest contender still open, taken out of the port's list."""
        for rec in reversed(port.contenders):
            if not rec.close_sent:
                port.contenders.remove(rec)
                return rec
        return None

    def _promote_contender(self, port: _Port, out: list[Action]) -> None:
        """The carrier closed: the newest contender carries the port, the rest are refused."""
        winner = self._pop_contender(port)
        if winner is None:
            return
        self._refuse_contenders(port, "another connection took over the port", out)
        self._make_carrier(port, winner)
        out.append(
            PortEvent(port.key, EventKind.IDENTITY, "carrier (old carrier closed)", winner.conn)
        )

    def _refuse_contenders(self, port: _Port, why: str, out: list[Action]) -> None:
        """Close every contender; their bytes never reach the port's console."""
        contenders, port.contenders = port.contenders, _NO_RECS
        for rec in contenders:
            rec.key, rec.role = None, _Role.UNBOUND
            if rec.held:
                out.append(Dropped(rec.conn, bytes(rec.held), "takeover refused"))
                rec.held = _NO_BYTES
            rec.paused = False
            if not rec.close_sent:
                out.append(PortEvent(port.key, EventKind.TAKEOVER_REFUSED, why, rec.conn))
            self._close(rec, f"takeover refused: {why}", out)

    def _make_carrier(self, port: _Port, rec: _ConnRec) -> None:
        rec.role = _Role.CARRIER
        if port.carrier is None:
            self._carried += 1
        port.carrier = rec

    def _drop_carrier(self, port: _Port) -> None:
        if port.carrier is not None:
            port.carrier = None
            self._carried -= 1

    def _make_drain(self, port: _Port, rec: _ConnRec, deadline: float | None) -> None:
        rec.role = _Role.DRAIN
        rec.drain_deadline = deadline
        port.drains = _added(port.drains, rec)
        if deadline is not None and not rec.close_sent:
            self._draining[rec.conn] = rec

    def _make_outcast(self, port: _Port, rec: _ConnRec, reason: str, out: list[Action]) -> None:
        rec.role = _Role.OUTCAST
        port.outcasts = _added(port.outcasts, rec)
        self._flush_held(port, rec, out)
        self._close(rec, reason, out)

    def _close(self, rec: _ConnRec, reason: str, out: list[Action]) -> None:
        if not rec.close_sent and not rec.closed:
            rec.close_sent = True
            out.append(CloseConn(rec.conn, reason))
        self._draining.pop(rec.conn, None)

    def _flush_held(self, port: _Port, rec: _ConnRec, out: list[Action]) -> None:
        if rec.held:
            out.append(Deliver(port.key, bytes(rec.held)))
            rec.held = _NO_BYTES
        if rec.paused:
            rec.paused = False
            if not rec.closed:
                out.append(ResumeReading(rec.conn))

    def _settle(self, port: _Port, out: list[Action]) -> None:
        """Flush what may flow now; forget the port if nothing is left of it."""
        if port.to_vm_buf and self._direct_to_vm(port):
            assert port.carrier is not None
            out.append(SendData(port.carrier.conn, bytes(port.to_vm_buf)))
            port.to_vm_buf = _NO_BYTES
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

    def _apply(self, port: _Port, step: Step, out: list[Action], now: float) -> None:  # noqa: C901
        """Carry out the effects of one table transition."""
        key = port.key
        before, after = step.before, step.after
        for eff in step.effects:
            if eff is Effect.START:
                assert after is not None
                self._pending[key] = port
                self._cookies[after.cookie] = key
                port.vm_source = self._conns[step.conn].source
                self._by_source[port.vm_source] = self._by_source.get(port.vm_source, 0) + 1
            elif eff is Effect.CLEAR:
                assert before is not None
                self._pending.pop(key, None)
                self._cookies.pop(before.cookie, None)
                self._uncount_source(port)
            elif eff is Effect.SET_DEST:
                rec = self._conns[step.conn]
                if rec.key is None:
                    rec.key = key
                    rec.role = _Role.WAITING
                    port.waiting = _added(port.waiting, rec)
            elif eff in (Effect.DROP_DEST, Effect.DROP_SOURCE):
                pass  # connection_closed handles the connection's own record
            elif eff is Effect.SEND_GOAHEAD:
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
                if dest is not None and dest.role is _Role.WAITING:
                    port.waiting.remove(dest)
                    why = "vMotion expired" if step.input is Input.EXPIRE else "vMotion aborted"
                    self._make_outcast(port, dest, why, out)
            else:
                out.append(PortEvent(key, _LOG_KIND[eff], _detail(step), step.conn))
        if step.state_before is not State.IDLE and step.state_after is State.IDLE:
            self._resolve_waiting(port, out)

    def _uncount_source(self, port: _Port) -> None:
        src = port.vm_source
        n = self._by_source.get(src, 0) - 1
        if n > 0:
            self._by_source[src] = n
        else:
            self._by_source.pop(src, None)
        port.vm_source = None

    def _switch(self, port: _Port, before: Pending, out: list[Action], now: float) -> None:
        assert before.dest is not None
        dest = self._conns[before.dest]
        src = port.carrier
        if src is not None:
            self._drop_carrier(port)
            self._make_drain(port, src, deadline=now + self.vmotion_timeout)
        port.waiting.remove(dest)
        self._make_carrier(port, dest)
        self._refuse_contenders(port, "the VM moved (vMotion complete)", out)

    def _resolve_waiting(self, port: _Port, out: list[Action]) -> None:
        """The vMotion settled: connections still waiting lose, unless the port has no carrier."""
        if not port.waiting:
            return
        promote: _ConnRec | None = None
        if port.carrier is None:
            live = [w for w in port.waiting if not w.close_sent]
            if live:
                promote = live[-1]
        waiting, port.waiting = port.waiting, _NO_RECS
        for w in waiting:
            if w is promote:
                self._make_carrier(port, w)
                out.append(
                    PortEvent(port.key, EventKind.IDENTITY, "carrier (vMotion settled)", w.conn)
                )
            else:
                self._make_outcast(port, w, "vMotion settled without this connection", out)
