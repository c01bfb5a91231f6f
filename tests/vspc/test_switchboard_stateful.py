"""Random interleavings of vMotion commands, closes, ticks and data against the switchboard.

Every console byte is part of a unique numbered 4-byte token, so loss, duplication
and reordering are visible. The driver behaves like the trio adapter: it honours
``to_vm_room`` / ``from_vm_room``, closes what ``CloseConn`` names (at a time of
its choosing, possibly after more in-flight bytes from that connection), and calls
``tick`` as time passes.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from vspc.core import board_records
from vspc.core.identity import PortKey
from vspc.core.switchboard import (
    Action,
    CloseConn,
    Deliver,
    Dropped,
    EventKind,
    PeerRefused,
    PortEvent,
    ResumeReading,
    RoomAvailable,
    SendData,
    SendGoahead,
    SendNotNow,
    SendPeerOk,
    Switchboard,
    VMotionSettled,
)

KEYS = (PortKey("aa01", "serial0"), PortKey("aa01", "serial1"), PortKey("bb02"))
TOK = 4
LIMIT = 4 * TOK  # to-VM buffer and from-VM hold limit, in bytes
MAX_CHUNK = 3  # tokens per from_vm call: the overshoot of one read
TIMEOUT = 5.0


def tokens(data: bytes) -> list[int]:
    assert len(data) % TOK == 0, "a token was split"
    return [struct.unpack_from(">I", data, i)[0] for i in range(0, len(data), TOK)]


class SwitchboardMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sb = Switchboard(
            vmotion_timeout=TIMEOUT,
            max_concurrent_vmotions=2,
            to_vm_buffer_limit=LIMIT,
            from_vm_hold_limit=LIMIT,
        )
        self.now = 0.0
        self.last_tick = -1.0
        self.next_conn = 0
        self.next_token = 0x00FFFF00  # 0xFF bytes in the data too
        self.next_secret = 0
        self.open: set[int] = set()  # opened, not yet connection_closed
        self.closing: set[int] = set()  # CloseConn received
        self.conn_key: dict[int, PortKey] = {}  # once bound, for good
        self.token_conn: dict[int, int] = {}
        self.sent_from: dict[int, list[int]] = {}  # conn -> tokens it sent (VM -> appliance)
        self.delivered: dict[PortKey, list[int]] = {k: [] for k in KEYS}
        self.dropped: list[int] = []
        self.to_vm_sent: dict[PortKey, list[int]] = {k: [] for k in KEYS}
        self.to_vm_recv: dict[PortKey, list[int]] = {k: [] for k in KEYS}
        self.cookie_of: dict[PortKey, bytes] = {}  # seq+secret of the port's last GOAHEAD
        self.source_of: dict[PortKey, int] = {}  # who got that GOAHEAD
        self.order_pairs: list[tuple[PortKey, int, int]] = []  # (key, first, second)

    # ---- helpers

    def _token(self, conn: int | None = None) -> bytes:
        t = self.next_token
        self.next_token += 1
        if conn is not None:
            self.token_conn[t] = conn
            self.sent_from.setdefault(conn, []).append(t)
        return struct.pack(">I", t)

    def _run(self, actions: list[Action]) -> None:
        closes = {a.conn for a in actions if isinstance(a, CloseConn)}
        for a in actions:
            self._run_one(a, closes)
        for c in self.open:
            k = self.sb.port_of(c)
            if k is not None:
                assert self.conn_key.setdefault(c, k) == k, "a connection changed port"

    def _run_one(self, a: Action, closes: set[object]) -> None:
        if isinstance(a, Deliver):
            self.delivered[a.key].extend(tokens(a.data))
        elif isinstance(a, SendData):
            assert a.conn in self.open, "sent to a closed connection"
            assert a.conn not in self.closing and a.conn not in closes
            key = self.sb.port_of(a.conn)
            assert key is not None and self.sb.carrier(key) == a.conn
            self.to_vm_recv[key].extend(tokens(a.data))
        elif isinstance(a, CloseConn):
            assert a.conn in self.open and a.conn not in self.closing
            self.closing.add(a.conn)
        elif isinstance(a, SendGoahead):
            key = self.sb.port_of(a.conn)
            assert key is not None
            self.cookie_of[key] = a.seq + a.secret
            self.source_of[key] = a.conn  # type: ignore[assignment]
        elif isinstance(a, Dropped):
            self.dropped.extend(tokens(a.data))
        elif isinstance(a, RoomAvailable):
            assert self.sb.to_vm_room(a.key) > 0
        elif isinstance(a, ResumeReading):
            assert self.sb.from_vm_room(a.conn) > 0
        elif isinstance(a, PortEvent):
            self._run_event(a, closes)
        elif isinstance(a, VMotionSettled):
            assert all(v.key != a.key for v in self.sb.pending_vmotions())
        else:
            assert isinstance(a, SendNotNow | SendPeerOk | PeerRefused)

    def _run_event(self, a: PortEvent, closes: set[object]) -> None:
        if a.kind is EventKind.TAKEOVER:
            assert a.key is not None
            [old] = [c for c in closes]
            self.order_pairs.append((a.key, old, a.conn))  # type: ignore[arg-type]
        elif a.kind is EventKind.VMOTION_COMPLETE:
            assert a.key is not None
            src = self.source_of[a.key]
            self.order_pairs.append((a.key, src, a.conn))  # type: ignore[arg-type]

    def _pick(self, data: st.DataObject, *preferred: object) -> int:
        """Mostly one of ``preferred`` (the meaningful sender), sometimes anyone."""
        good = sorted(c for c in preferred if c in self.open)
        if good and data.draw(st.integers(0, 3)) > 0:
            return data.draw(st.sampled_from(good))
        return data.draw(st.sampled_from(sorted(self.open)))

    # ---- rules

    @rule()
    def open_conn(self) -> None:
        c = self.next_conn
        self.next_conn += 1
        self.open.add(c)
        self._run(self.sb.connection_opened(c))

    @precondition(lambda self: self.open)
    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def identify(self, data: st.DataObject, key: PortKey) -> None:
        unbound = [c for c in self.open if self.sb.port_of(c) is None]
        self._run(self.sb.identified(self._pick(data, *unbound), key, self.now))

    @precondition(lambda self: self.open)
    @rule(data=st.data(), seq=st.binary(min_size=0, max_size=3))
    def begin(self, data: st.DataObject, seq: bytes) -> None:
        self.next_secret += 1
        secret = b"\xff" + self.next_secret.to_bytes(4, "big")
        carriers = [self.sb.carrier(k) for k in KEYS]
        self._begin(self._pick(data, *carriers), seq, secret)

    def _begin(self, conn: object, seq: bytes, secret: bytes) -> None:
        """BEGIN; begin_is_goahead foretold exactly whether it answers GOAHEAD (the
        adapter writes that answer before calling begin)."""
        foretold = self.sb.begin_is_goahead(conn, seq, secret)
        acts = self.sb.begin(conn, seq, secret, self.now)
        goaheads = [a for a in acts if isinstance(a, SendGoahead)]
        assert goaheads == ([SendGoahead(conn, seq, secret)] if foretold else [])
        self._run(acts)

    @precondition(lambda self: self.open)
    @rule(data=st.data(), how=st.sampled_from(["right", "right", "long", "short", "junk"]))
    def peer(self, data: st.DataObject, how: str) -> None:
        unbound = [c for c in self.open if self.sb.port_of(c) is None]
        conn = self._pick(data, *unbound)
        pending = {v.key: v for v in self.sb.pending_vmotions()}
        exact = {self.cookie_of[k] for k in pending}
        if how == "junk" or not exact:
            cookie = data.draw(st.binary(max_size=8))
        else:
            cookie = data.draw(st.sampled_from(sorted(exact)))
            if how == "long":
                cookie += b"\xff"
            elif how == "short":
                cookie = cookie[:-1]
        acts = self.sb.peer(conn, cookie, self.now)
        if any(isinstance(a, SendPeerOk) for a in acts):
            # only the exact cookie of a pending vMotion, and never a second destination
            k = self.sb.port_of(conn)
            assert k is not None and k in pending
            assert cookie == self.cookie_of[k]
            assert pending[k].dest in (None, conn)
            assert pending[k].source != conn
        self._run(acts)

    # focused rules: hypothesis picks uniformly among enabled rules, so these make
    # the interesting paths (PEER, COMPLETE) common once a vMotion is pending

    @precondition(lambda self: any(self.sb.carrier(k) is not None for k in KEYS))
    @rule(data=st.data(), seq=st.binary(min_size=1, max_size=3))
    def begin_on_carrier(self, data: st.DataObject, seq: bytes) -> None:
        carriers = [c for k in KEYS if (c := self.sb.carrier(k)) is not None]
        conn = data.draw(st.sampled_from(sorted(carriers)))  # type: ignore[type-var]
        self.next_secret += 1
        secret = self.next_secret.to_bytes(3, "big") + b"\xff"
        self._begin(conn, seq, secret)

    @precondition(lambda self: self.sb.pending_vmotions())
    @rule(data=st.data(), fresh=st.booleans())
    def peer_exact(self, data: st.DataObject, fresh: bool) -> None:
        v = data.draw(st.sampled_from(sorted(self.sb.pending_vmotions(), key=repr)))
        if fresh or not self.open:
            self.open_conn()
            conn = self.next_conn - 1
        else:
            conn = self._pick(data)
        self._run(self.sb.peer(conn, self.cookie_of[v.key], self.now))

    @precondition(lambda self: any(v.dest is not None for v in self.sb.pending_vmotions()))
    @rule(data=st.data())
    def complete_exact(self, data: st.DataObject) -> None:
        peered = [v for v in self.sb.pending_vmotions() if v.dest is not None]
        v = data.draw(st.sampled_from(sorted(peered, key=repr)))
        self._run(self.sb.complete(v.dest, v.seq, self.now))

    @precondition(lambda self: self.open)
    @rule(data=st.data(), right=st.booleans())
    def complete(self, data: st.DataObject, right: bool) -> None:
        conn = self._pick(data, *(v.dest for v in self.sb.pending_vmotions()))
        seqs = [v.seq for v in self.sb.pending_vmotions() if v.dest == conn]
        seq = seqs[0] if right and seqs else data.draw(st.binary(max_size=3))
        self._run(self.sb.complete(conn, seq, self.now))

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        sources = [v.source for v in self.sb.pending_vmotions()]
        self._run(self.sb.abort(self._pick(data, *sources), self.now))

    @precondition(lambda self: self.open)
    @rule(data=st.data(), prefer_closing=st.booleans())
    def close(self, data: st.DataObject, prefer_closing: bool) -> None:
        pool = sorted(self.closing) if prefer_closing and self.closing else sorted(self.open)
        conn = data.draw(st.sampled_from(pool))
        self.open.discard(conn)
        self.closing.discard(conn)
        self._run(self.sb.connection_closed(conn, self.now))

    @rule(dt=st.sampled_from([0.0, 0.5, 2.0, 4.9, 5.0, 7.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self._run(self.sb.tick(self.now))
        self.last_tick = self.now
        for v in self.sb.pending_vmotions():
            assert v.deadline > self.now, "a vMotion outlived its deadline"
        nd = self.sb.next_deadline()
        assert nd is None or nd > self.now

    @precondition(lambda self: self.open)
    @rule(data=st.data(), n=st.integers(1, MAX_CHUNK))
    def from_vm(self, data: st.DataObject, n: int) -> None:
        conn = self._pick(data)
        if self.sb.from_vm_room(conn) == 0:
            return  # the adapter stops reading
        chunk = b"".join(self._token(conn) for _ in range(n))
        self._run(self.sb.from_vm(conn, chunk))

    @rule(key=st.sampled_from(KEYS), n=st.integers(1, 3))
    def to_vm(self, key: PortKey, n: int) -> None:
        n = min(n, self.sb.to_vm_room(key) // TOK)
        if n == 0:
            return  # the adapter waits for RoomAvailable
        chunk = b""
        for _ in range(n):
            tok = self._token()
            self.to_vm_sent[key].extend(tokens(tok))
            chunk += tok
        self._run(self.sb.to_vm(key, chunk))

    # ---- invariants

    @invariant()
    def one_carrier_per_port(self) -> None:
        carriers = [self.sb.carrier(k) for k in KEYS]
        live = [c for c in carriers if c is not None]
        assert len(live) == len(set(live)), "a connection carries two ports"
        for k, c in zip(KEYS, carriers):
            if c is not None:
                assert c in self.open and self.sb.port_of(c) == k
        assert self.sb.carried_ports() == len(live), "carried-ports counter out of step"
        assert not board_records.NO_RECS and not board_records.NO_BYTES, "shared empties mutated"

    @invariant()
    def buffers_bounded(self) -> None:
        for k in KEYS:
            assert self.sb.to_vm_buffered(k) <= LIMIT
        for c in self.open:
            assert self.sb.from_vm_held(c) <= LIMIT + MAX_CHUNK * TOK
        assert len(self.sb.pending_vmotions()) <= 2

    @invariant()
    def settled_ports_hold_nothing_for_the_vm(self) -> None:
        pending = {v.key for v in self.sb.pending_vmotions()}
        for k in KEYS:
            if self.sb.carrier(k) is not None and k not in pending:
                assert self.sb.to_vm_buffered(k) == 0, "held bytes not flushed at once"

    @invariant()
    def no_pending_past_last_tick(self) -> None:
        for v in self.sb.pending_vmotions():
            assert v.deadline > self.last_tick

    @invariant()
    def vm_to_appliance_once_in_order(self) -> None:
        seen: set[int] = set()
        for k, toks in self.delivered.items():
            last: dict[int, int] = {}
            for t in toks:
                assert t not in seen, "duplicated"
                seen.add(t)
                c = self.token_conn[t]
                assert self.conn_key.get(c) == k, "delivered to the wrong port"
                assert t > last.get(c, -1), "reordered"
                last[c] = t
        assert not seen & set(self.dropped)
        for k, first, second in self.order_pairs:
            toks = self.delivered[k]
            pos_first = [i for i, t in enumerate(toks) if self.token_conn[t] == first]
            pos_second = [i for i, t in enumerate(toks) if self.token_conn[t] == second]
            if pos_first and pos_second:
                assert max(pos_first) < min(pos_second), "destination bytes before the source's"

    @invariant()
    def appliance_to_vm_once_in_order(self) -> None:
        for k in KEYS:
            recv, sent = self.to_vm_recv[k], self.to_vm_sent[k]
            assert recv == sent[: len(recv)], "to-VM bytes lost, duplicated or reordered"
            assert len(recv) * TOK + self.sb.to_vm_buffered(k) == len(sent) * TOK

    def teardown(self) -> None:
        # everything closes and time runs out: every byte is accounted for
        for c in sorted(self.open):
            self.open.discard(c)
            self.closing.discard(c)
            self._run(self.sb.connection_closed(c, self.now))
        self.now += 10 * TIMEOUT
        self._run(self.sb.tick(self.now))
        assert self.sb.pending_vmotions() == []
        assert self.sb.next_deadline() is None
        assert self.sb.connections() == []
        delivered = [t for toks in self.delivered.values() for t in toks]
        sent = [t for toks in self.sent_from.values() for t in toks]
        assert sorted(delivered + self.dropped) == sorted(sent), "VM -> appliance bytes lost"
        # the Dropped ones never had a port
        for t in self.dropped:
            assert self.token_conn[t] not in self.conn_key
        self.appliance_to_vm_once_in_order()
        self.vm_to_appliance_once_in_order()


SwitchboardMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSwitchboardInterleavings = SwitchboardMachine.TestCase
