"""The per-port vMotion handoff, written as a table.

A VM's serial port is carried by one ESX connection (the *carrier*). When the VM
migrates, the source ESX sends ``VMOTION-BEGIN(seq)``; we answer at once with
``GOAHEAD(seq + secret)`` (or ``NOTNOW(seq)``). The destination host opens a new
connection and sends ``PEER(seq + secret)``; only the exact cookie of a pending
vMotion of that port is accepted (``PEER-OK(seq)``). ``COMPLETE(seq)`` from the
accepted destination switches the port; ``ABORT`` from the source, or the pending
vMotion outliving its deadline, leaves the VM with the source.

Everything that can happen to a port's vMotion is one ``Input``; the caller (the
``Switchboard``) turns a protocol message into an ``Input`` with the small
``PortVMotion`` classifiers (is the cookie exact? is the sender the source?), and
``TABLE[(state, input)]`` gives the ``Effect``s to carry out and the next state.
Bookkeeping effects (``START``, ``SET_DEST``, ...) are applied here; the others
are carried out by the switchboard, which sees the record before and after.

No I/O, no clock, no randomness: ``now`` and the secret come in as arguments.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, replace

Conn = Hashable

#: Suggested length of the GOAHEAD secret (the adapter draws it with os.urandom).
SECRET_SIZE = 16


class State(enum.Enum):
    IDLE = "idle"  # one carrier connection (or none), nothing pending
    PENDING = "pending"  # BEGIN received from the source, GOAHEAD sent; waiting for PEER
    PEERED = "peered"  # PEER accepted from the destination, PEER-OK sent; waiting for COMPLETE


class Input(enum.Enum):
    BEGIN = "begin"  # BEGIN from the port's carrier, and room for one more vMotion
    BEGIN_BUSY = "begin_busy"  # BEGIN from the carrier, but the concurrent limit is reached
    BEGIN_NOT_CARRIER = "begin_not_carrier"  # BEGIN from a connection not carrying the port
    PEER = "peer"  # PEER with the exact seq+secret, from a connection that may be the destination
    PEER_REPEAT = "peer_repeat"  # the accepted destination sends its PEER again
    PEER_BAD = (
        "peer_bad"  # right seq, wrong secret; or a connection that may not be the destination
    )
    COMPLETE = "complete"  # COMPLETE(seq) from the accepted destination, seq of the pending vMotion
    COMPLETE_BAD = "complete_bad"  # any other COMPLETE
    ABORT = "abort"  # ABORT from the source of the pending vMotion
    ABORT_BAD = "abort_bad"  # ABORT from anyone else, or with nothing pending
    EXPIRE = "expire"  # the pending vMotion is past its deadline
    SOURCE_CLOSED = "source_closed"  # the source connection closed before the vMotion settled
    DEST_CLOSED = "dest_closed"  # the accepted destination closed before COMPLETE


class Effect(enum.Enum):
    # bookkeeping, applied by PortVMotion itself (the switchboard mirrors what it needs)
    START = "start"  # record the pending vMotion (seq, secret, source, deadline)
    SET_DEST = "set_dest"  # the PEER sender is the destination
    DROP_DEST = "drop_dest"  # forget the destination (it closed)
    DROP_SOURCE = "drop_source"  # forget the source (it closed); the port has no carrier
    CLEAR = "clear"  # forget the pending vMotion
    # carried out by the switchboard
    SEND_GOAHEAD = "send_goahead"  # GOAHEAD(seq + secret) to the source
    SEND_NOTNOW = "send_notnow"  # NOTNOW(seq of this BEGIN) to its sender
    SEND_PEER_OK = "send_peer_ok"  # PEER-OK(seq) to the destination
    SWITCH_TO_DEST = "switch_to_dest"  # destination becomes carrier; source drains, then closes
    CLOSE_DEST = "close_dest"  # close the destination of a vMotion that did not happen
    LOG_BEGIN = "log_begin"
    LOG_NOTNOW = "log_notnow"
    LOG_PEER = "log_peer"
    LOG_PEER_REFUSED = "log_peer_refused"
    LOG_COMPLETE = "log_complete"
    LOG_COMPLETE_REFUSED = "log_complete_refused"
    LOG_ABORT = "log_abort"
    LOG_ABORT_IGNORED = "log_abort_ignored"
    LOG_EXPIRE = "log_expire"
    LOG_SOURCE_CLOSED = "log_source_closed"
    LOG_DEST_CLOSED = "log_dest_closed"


_S = State
_I = Input
_E = Effect
_NOTNOW = (_E.SEND_NOTNOW, _E.LOG_NOTNOW)
_REFUSE = (_E.LOG_PEER_REFUSED,)

# (state, input) -> (effects in order, next state). Total over State x Input; rows that
# the classifiers cannot produce (e.g. EXPIRE while IDLE) are harmless no-ops or refusals.
TABLE: dict[tuple[State, Input], tuple[tuple[Effect, ...], State]] = {
    # ---- IDLE: one carrier, nothing pending
    (_S.IDLE, _I.BEGIN): ((_E.START, _E.SEND_GOAHEAD, _E.LOG_BEGIN), _S.PENDING),
    (_S.IDLE, _I.BEGIN_BUSY): (_NOTNOW, _S.IDLE),
    (_S.IDLE, _I.BEGIN_NOT_CARRIER): (_NOTNOW, _S.IDLE),
    (_S.IDLE, _I.PEER): (_REFUSE, _S.IDLE),
    (_S.IDLE, _I.PEER_REPEAT): (_REFUSE, _S.IDLE),
    (_S.IDLE, _I.PEER_BAD): (_REFUSE, _S.IDLE),
    (_S.IDLE, _I.COMPLETE): ((_E.LOG_COMPLETE_REFUSED,), _S.IDLE),
    (_S.IDLE, _I.COMPLETE_BAD): ((_E.LOG_COMPLETE_REFUSED,), _S.IDLE),
    (_S.IDLE, _I.ABORT): ((_E.LOG_ABORT_IGNORED,), _S.IDLE),
    (_S.IDLE, _I.ABORT_BAD): ((_E.LOG_ABORT_IGNORED,), _S.IDLE),
    (_S.IDLE, _I.EXPIRE): ((), _S.IDLE),
    (_S.IDLE, _I.SOURCE_CLOSED): ((), _S.IDLE),
    (_S.IDLE, _I.DEST_CLOSED): ((), _S.IDLE),
    # ---- PENDING: GOAHEAD sent, waiting for the destination's PEER
    (_S.PENDING, _I.BEGIN): (_NOTNOW, _S.PENDING),
    (_S.PENDING, _I.BEGIN_BUSY): (_NOTNOW, _S.PENDING),
    (_S.PENDING, _I.BEGIN_NOT_CARRIER): (_NOTNOW, _S.PENDING),
    (_S.PENDING, _I.PEER): ((_E.SET_DEST, _E.SEND_PEER_OK, _E.LOG_PEER), _S.PEERED),
    (_S.PENDING, _I.PEER_REPEAT): (_REFUSE, _S.PENDING),
    (_S.PENDING, _I.PEER_BAD): (_REFUSE, _S.PENDING),
    (_S.PENDING, _I.COMPLETE): ((_E.LOG_COMPLETE_REFUSED,), _S.PENDING),
    (_S.PENDING, _I.COMPLETE_BAD): ((_E.LOG_COMPLETE_REFUSED,), _S.PENDING),
    (_S.PENDING, _I.ABORT): ((_E.LOG_ABORT, _E.CLEAR), _S.IDLE),
    (_S.PENDING, _I.ABORT_BAD): ((_E.LOG_ABORT_IGNORED,), _S.PENDING),
    (_S.PENDING, _I.EXPIRE): ((_E.LOG_EXPIRE, _E.CLEAR), _S.IDLE),
    (_S.PENDING, _I.SOURCE_CLOSED): ((_E.DROP_SOURCE, _E.LOG_SOURCE_CLOSED), _S.PENDING),
    (_S.PENDING, _I.DEST_CLOSED): ((), _S.PENDING),
    # ---- PEERED: PEER-OK sent, waiting for COMPLETE from the destination
    (_S.PEERED, _I.BEGIN): (_NOTNOW, _S.PEERED),
    (_S.PEERED, _I.BEGIN_BUSY): (_NOTNOW, _S.PEERED),
    (_S.PEERED, _I.BEGIN_NOT_CARRIER): (_NOTNOW, _S.PEERED),
    (_S.PEERED, _I.PEER): (_REFUSE, _S.PEERED),  # a second destination
    (_S.PEERED, _I.PEER_REPEAT): ((_E.SEND_PEER_OK,), _S.PEERED),
    (_S.PEERED, _I.PEER_BAD): (_REFUSE, _S.PEERED),
    (_S.PEERED, _I.COMPLETE): ((_E.SWITCH_TO_DEST, _E.LOG_COMPLETE, _E.CLEAR), _S.IDLE),
    (_S.PEERED, _I.COMPLETE_BAD): ((_E.LOG_COMPLETE_REFUSED,), _S.PEERED),
    (_S.PEERED, _I.ABORT): ((_E.CLOSE_DEST, _E.LOG_ABORT, _E.CLEAR), _S.IDLE),
    (_S.PEERED, _I.ABORT_BAD): ((_E.LOG_ABORT_IGNORED,), _S.PEERED),
    (_S.PEERED, _I.EXPIRE): ((_E.CLOSE_DEST, _E.LOG_EXPIRE, _E.CLEAR), _S.IDLE),
    (_S.PEERED, _I.SOURCE_CLOSED): ((_E.DROP_SOURCE, _E.LOG_SOURCE_CLOSED), _S.PEERED),
    (_S.PEERED, _I.DEST_CLOSED): ((_E.DROP_DEST, _E.LOG_DEST_CLOSED), _S.PENDING),
}


@dataclass(frozen=True, slots=True)
class Pending:
    """A pending vMotion of one port."""

    seq: bytes
    secret: bytes
    source: Conn | None  # None once the source connection has closed
    dest: Conn | None  # the connection whose PEER was accepted
    started: float
    deadline: float

    @property
    def cookie(self) -> bytes:
        """What the destination must send in PEER: seq + secret, no delimiter."""
        return self.seq + self.secret


@dataclass(frozen=True, slots=True)
class Step:
    """One transition: what came in, the effects to carry out, the records around it."""

    input: Input
    state_before: State
    state_after: State
    effects: tuple[Effect, ...]
    before: Pending | None
    after: Pending | None
    conn: Conn | None  # the connection the input came from (None for EXPIRE)
    seq: bytes  # the seq the input carried (BEGIN/COMPLETE), else the pending seq or b""
    note: str  # why a refusal was a refusal; empty otherwise

    @property
    def record(self) -> Pending | None:
        """The vMotion this step is about (after bookkeeping if still pending)."""
        return self.after if self.after is not None else self.before


class PortVMotion:
    """The vMotion state of one port: ``state`` plus the pending record."""

    __slots__ = ("pending", "state")

    def __init__(self) -> None:
        self.state = State.IDLE
        self.pending: Pending | None = None

    # ---- classifiers: protocol message -> Input, then fire the table

    def begin(
        self,
        conn: Conn,
        seq: bytes,
        secret: bytes,
        now: float,
        timeout: float,
        *,
        is_carrier: bool,
        busy: bool,
    ) -> Step:
        """BEGIN(seq) from ``conn``; ``busy`` means the concurrent limit is reached."""
        proposed = Pending(seq, secret, conn, None, now, now + timeout)
        if not is_carrier:
            return self._fire(_I.BEGIN_NOT_CARRIER, conn, seq, "not the port's carrier")
        if self.state is _S.IDLE and busy:
            return self._fire(_I.BEGIN_BUSY, conn, seq, "concurrent vMotion limit reached")
        note = "" if self.state is _S.IDLE else "a vMotion is already pending on this port"
        return self._fire(_I.BEGIN, conn, seq, note, proposed)

    def begin_goes_ahead(self, *, is_carrier: bool, busy: bool) -> bool:
        """Whether ``begin`` with these inputs answers GOAHEAD (a question: nothing
        changes), so that an adapter may write the answer before ``begin`` runs."""
        return is_carrier and self.state is _S.IDLE and not busy

    def peer(self, conn: Conn, cookie: bytes, *, eligible: bool) -> Step:
        """PEER(cookie) from ``conn``. ``eligible``: conn may become this port's destination."""
        p = self.pending
        if p is None:
            return self._fire(_I.PEER_BAD, conn, b"", "no vMotion pending")
        if cookie != p.cookie:
            return self._fire(_I.PEER_BAD, conn, p.seq, "wrong secret")
        if conn == p.source:
            return self._fire(_I.PEER_BAD, conn, p.seq, "PEER from the source connection")
        if p.dest is not None and conn == p.dest:
            return self._fire(_I.PEER_REPEAT, conn, p.seq, "")
        if not eligible:
            return self._fire(
                _I.PEER_BAD, conn, p.seq, "connection is bound to another port or closing"
            )
        note = "" if p.dest is None else "another destination was already accepted"
        return self._fire(_I.PEER, conn, p.seq, note)

    def complete(self, conn: Conn, seq: bytes) -> Step:
        p = self.pending
        if p is None:
            return self._fire(_I.COMPLETE_BAD, conn, seq, "no vMotion pending")
        if p.dest is None or conn != p.dest:
            return self._fire(_I.COMPLETE_BAD, conn, seq, "not from the accepted destination")
        if seq != p.seq:
            return self._fire(_I.COMPLETE_BAD, conn, seq, "wrong sequence")
        return self._fire(_I.COMPLETE, conn, seq, "")

    def abort(self, conn: Conn) -> Step:
        p = self.pending
        if p is None:
            return self._fire(_I.ABORT_BAD, conn, b"", "no vMotion pending")
        if conn != p.source:
            return self._fire(_I.ABORT_BAD, conn, p.seq, "not from the source")
        return self._fire(_I.ABORT, conn, p.seq, "")

    def expire(self, now: float) -> Step | None:
        """EXPIRE if a vMotion is pending and its deadline has passed, else None."""
        p = self.pending
        if p is None or now < p.deadline:
            return None
        return self._fire(_I.EXPIRE, None, p.seq, "")

    def closed(self, conn: Conn) -> Step | None:
        """The source or destination closed; None if ``conn`` plays no part here."""
        p = self.pending
        if p is None:
            return None
        if p.source is not None and conn == p.source:
            return self._fire(_I.SOURCE_CLOSED, conn, p.seq, "")
        if p.dest is not None and conn == p.dest:
            return self._fire(_I.DEST_CLOSED, conn, p.seq, "")
        return None

    @property
    def deadline(self) -> float | None:
        return None if self.pending is None else self.pending.deadline

    # ---- the table

    def _fire(
        self,
        inp: Input,
        conn: Conn | None,
        seq: bytes,
        note: str,
        proposed: Pending | None = None,
    ) -> Step:
        before_state, before = self.state, self.pending
        effects, next_state = TABLE[(before_state, inp)]
        rec = before
        for eff in effects:
            if eff is _E.START:
                assert proposed is not None
                rec = proposed
            elif eff is _E.SET_DEST:
                assert rec is not None
                rec = replace(rec, dest=conn)
            elif eff is _E.DROP_DEST:
                assert rec is not None
                rec = replace(rec, dest=None)
            elif eff is _E.DROP_SOURCE:
                assert rec is not None
                rec = replace(rec, source=None)
            elif eff is _E.CLEAR:
                rec = None
        self.state, self.pending = next_state, rec
        return Step(inp, before_state, next_state, effects, before, rec, conn, seq, note)
