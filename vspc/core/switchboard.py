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
    sb.identify(conn, uuid, label, now)   # VM-VC-UUID known (label None: not yet known)
    sb.claim(conn, key, now)              # PortClaimed, then as identified(conn, key, now)
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
    sb.vmotion_pending_for(uuid) -> bool  # a vMotion of that VM is pending (any port)

Actions: ``SendData`` / ``SendGoahead`` / ``SendNotNow`` / ``SendPeerOk`` (write to an
ESX connection), ``Deliver`` (console bytes to the port's console), ``CloseConn``
(close that connection, then call ``connection_closed``), ``PortEvent`` (log it,
write it to the console's event log when ``key`` is set, count it), ``RoomAvailable``
(a full to-VM buffer drained: writers waiting on ``to_vm_room`` may go on),
``ResumeReading`` (a connection whose held bytes were full may be read again),
``Dropped`` (bytes of a connection that closed before it ever had an identity),
``ProbeConn`` (ask that connection for proof of life; report the outcome with
``probe_answered`` / ``probe_failed``). Decisions come as actions too (they live in
``vspc.core.board_actions``): ``VMotionSettled`` (a vMotion ended, with its outcome),
``PeerRefused`` (a PEER was refused; close its sender or not), ``PortClaimed`` (a
connection names its port: note the port's display name), ``IdentityDeferred`` (a
connection waits for VMOTION-PEER) and ``IdentityReady`` (its vMotion settled without
it: ``claim`` it unless it is closing).

Metrics: count ``PortEvent`` kinds; the vMotion outcomes are ``VMotionSettled``
(complete, abort, expired), ``SendNotNow`` and ``PeerRefused``. Time BEGIN->GOAHEAD
around ``begin`` plus the write of ``SendGoahead``.

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
* ``identify`` with no port label while a vMotion of that VM is pending defers the
  connection (``IdentityDeferred``): the destination need not send DO-PROXY, so its
  label is unknown until VMOTION-PEER binds it by cookie. If the vMotion settles
  without it, ``IdentityReady`` names the port it carries (the default label).
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

from common.proto.vmotion import SECRET_SIZE, Effect, State, Step
from vspc.core.board_actions import (
    Action,
    BufferFull,
    CloseConn,
    Conn,
    Deliver,
    Dropped,
    EventKind,
    IdentityDeferred,
    IdentityReady,
    Outcome,
    PeerRefused,
    PortClaimed,
    PortEvent,
    ProbeConn,
    ResumeReading,
    RoomAvailable,
    SendData,
    SendGoahead,
    SendNotNow,
    SendPeerOk,
    VMotionInfo,
    VMotionSettled,
)
from vspc.core.board_records import NO_BYTES, ConnRec, PortRec, Role, added, grown
from vspc.core.identity import DEFAULT_LABEL, PortKey
from vspc.core.port_vmotions import VMotionTable

__all__ = [
    "SECRET_SIZE",
    "Action",
    "BufferFull",
    "CloseConn",
    "Conn",
    "Deliver",
    "Dropped",
    "EventKind",
    "IdentityDeferred",
    "IdentityReady",
    "Outcome",
    "PeerRefused",
    "PortClaimed",
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
    "VMotionSettled",
]


class Switchboard(VMotionTable):
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
        super().__init__(
            vmotion_timeout=vmotion_timeout,
            max_concurrent_vmotions=max_concurrent_vmotions,
            max_vmotions_per_source=max_vmotions_per_source,
            to_vm_buffer_limit=to_vm_buffer_limit,
            from_vm_hold_limit=(
                to_vm_buffer_limit if from_vm_hold_limit is None else from_vm_hold_limit
            ),
        )

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

    # ---- connection lifecycle

    def connection_opened(self, conn: Conn, source: object = None) -> list[Action]:
        self._rec(conn).source = source
        return [PortEvent(None, EventKind.CONNECT, "", conn)]

    def identify(self, conn: Conn, uuid: str, label: str | None, now: float) -> list[Action]:
        """``conn`` named VM ``uuid`` (canonical) and maybe its port ``label``.

        With no label while a vMotion of that VM is pending, ``conn`` is most likely
        the destination (it need not send DO-PROXY): ``IdentityDeferred``, and
        VMOTION-PEER binds it by cookie. Otherwise as ``claim``."""
        if label is None and self._defer(conn, uuid):
            return [IdentityDeferred(conn, uuid)]
        return self.claim(conn, PortKey(uuid, label or DEFAULT_LABEL), now)

    def claim(self, conn: Conn, key: PortKey, now: float) -> list[Action]:
        """``PortClaimed(conn, key)``, then what ``identified(conn, key, now)`` says."""
        self._deferred.pop(conn, None)
        return [PortClaimed(conn, key), *self.identified(conn, key, now)]

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
            rec.role = Role.WAITING
            port.waiting = added(port.waiting, rec)
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

    def connection_closed(self, conn: Conn, now: float) -> list[Action]:
        """``conn`` is closed (any cause). Unknown or repeated calls are ignored."""
        self._deferred.pop(conn, None)
        rec = self._conns.pop(conn, None)
        if rec is None:
            return []
        rec.closed = True
        self._draining.pop(conn, None)
        out: list[Action] = []
        if rec.key is None:
            if rec.held:
                out.append(Dropped(conn, bytes(rec.held), "closed before any identity"))
                rec.held = NO_BYTES
            out.append(PortEvent(None, EventKind.DISCONNECT, "", conn))
            return out
        port = self._ports[rec.key]
        out.append(PortEvent(port.key, EventKind.DISCONNECT, rec.role.value, conn))
        step = port.vm.closed(conn)
        if step is not None:
            self._apply(port, step, out, now)
        self._leave(port, rec, out)
        self._settle(port, out)
        self._resolve_deferred(out)
        return out

    def _leave(self, port: PortRec, rec: ConnRec, out: list[Action]) -> None:
        """The closed ``rec`` leaves ``port`` according to its role."""
        role = rec.role
        if role is Role.CARRIER:
            self._drop_carrier(port)
            if rec.held:  # waiting behind drains: keep its place in the order
                port.drains = added(port.drains, rec)
            self._promote_contender(port, out)
        elif role is Role.CONTENDER:
            port.contenders.remove(rec)
            if rec.held:
                out.append(Dropped(rec.conn, bytes(rec.held), "contender closed"))
                rec.held = NO_BYTES
        elif role is Role.DRAIN:
            if not rec.held:
                port.drains.remove(rec)
        elif role is Role.WAITING:
            port.waiting.remove(rec)
            self._flush_held(port, rec, out)
        elif role is Role.OUTCAST:
            port.outcasts.remove(rec)

    # ---- vMotion commands

    def begin_is_goahead(self, conn: Conn, seq: bytes, secret: bytes) -> bool:
        """Whether ``begin(conn, seq, secret, now)`` called next answers GOAHEAD (the
        port's carrier, no vMotion pending, within the caps): the adapter may write
        that answer first and keep the books (``begin``) right after, with no await."""
        rec = self._conns.get(conn)
        if rec is None or rec.key is None or not secret:
            return False
        port = self._ports[rec.key]
        return port.vm.begin_goes_ahead(
            is_carrier=port.carrier is rec, busy=self._begin_busy(rec, seq, secret)
        )

    def _begin_busy(self, rec: ConnRec, seq: bytes, secret: bytes) -> bool:
        """A BEGIN's ``busy`` for the vMotion table: the limit reached, or its cookie taken."""
        return self._vmotion_busy(rec.source) or (seq + secret) in self._cookies

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
        busy = self._begin_busy(rec, seq, secret)
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
        """VMOTION-PEER(cookie) from ``conn``: cookie must be a pending seq + secret exactly.

        A refusal ends with ``PeerRefused``."""
        rec = self._rec(conn)
        key = self._cookies.get(cookie)
        out: list[Action] = []
        if key is None:
            step = self._peer_unknown(conn, cookie, out, now)
        else:
            port = self._ports[key]
            eligible = not rec.close_sent and (
                rec.key is None or (rec.key == key and rec.role is Role.WAITING)
            )
            step = port.vm.peer(conn, cookie, eligible=eligible)
            self._apply(port, step, out, now)
            self._settle(port, out)
            self._resolve_deferred(out)
        if step is None or Effect.LOG_PEER_REFUSED in step.effects:
            out.append(PeerRefused(conn, close=not self._is_carrier(rec)))
        return out

    def _peer_unknown(
        self, conn: Conn, cookie: bytes, out: list[Action], now: float
    ) -> Step | None:
        """A PEER whose cookie is no pending one's: refused (by the table when it names
        a pending sequence with the wrong secret)."""
        for port in self._pending.values():
            p = port.vm.pending
            if p is not None and cookie.startswith(p.seq):
                step = port.vm.peer(conn, cookie, eligible=False)
                self._apply(port, step, out, now)
                return step
        out.append(
            PortEvent(
                None,
                EventKind.PEER_REFUSED,
                f"cookie={cookie.hex()}; no pending vMotion with this sequence",
                conn,
            )
        )
        return None

    def _is_carrier(self, rec: ConnRec) -> bool:
        return rec.key is not None and self.carrier(rec.key) is rec.conn

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
        self._resolve_deferred(out)
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
        self._resolve_deferred(out)
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
        self._resolve_deferred(out)
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
        rec.held = grown(rec.held, data)
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
        port.to_vm_buf = grown(port.to_vm_buf, data)
        if len(port.to_vm_buf) >= self.to_vm_buffer_limit:
            port.to_vm_full = True
        return []
