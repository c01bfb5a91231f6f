"""Exactly once across any break: two Sessions over a connection cut at random points.

Records in flight are lost on a cut; both ends then see the connection go down and a
new one come up. Whatever the traffic and the cuts, each receiver gets every byte once,
in order; under the BLOCK policy the sender is held back to the replay bound; under DROP
what was lost is named exactly by GAP. With ``ack_on_consume`` the receivers consume at
random: exactly once still holds, a receiver never holds more of a stream than the
peer's replay limit, and a stream nobody reads stalls no other channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import event, given, settings
from hypothesis import strategies as st

from common.proto.session.channels import (
    ChannelClosed,
    ChannelState,
    Data,
    Eof,
    Exited,
    Gap,
    ProtocolError,
    Resized,
    Signalled,
    Writable,
)
from common.proto.session.messages import ExecSpec, ExitStatus, Stream
from common.proto.session.replay import Policy
from common.proto.session.session import SessionConfig
from tests.common.proto.session.test_session import Wire, of_type, received

Key = tuple[int, int, Stream]  # (writing side, channel, stream)


@dataclass(frozen=True)
class Op:
    kind: str  # "write", "order" (resize or signal), "flush", "deliver", "cut", "consume"
    side: int
    ch: int
    pick: int
    data: bytes
    n: int


ops = st.one_of(
    st.builds(
        Op,
        kind=st.just("write"),
        side=st.integers(0, 1),
        ch=st.integers(0, 2),
        pick=st.integers(0, 1),
        data=st.binary(min_size=1, max_size=200),
        n=st.just(0),
    ),
    st.builds(
        Op,
        st.sampled_from(["flush", "cut"]),
        st.just(0),
        st.just(0),
        st.just(0),
        st.just(b""),
        st.just(0),
    ),
    st.builds(
        Op,
        st.just("order"),
        st.just(0),
        st.integers(0, 2),
        st.integers(0, 1),
        st.just(b""),
        st.integers(1, 255),
    ),
    st.builds(
        Op,
        st.just("deliver"),
        st.integers(0, 1),
        st.just(0),
        st.just(0),
        st.just(b""),
        st.integers(1, 6),
    ),
    st.builds(
        Op,
        kind=st.just("consume"),
        side=st.integers(0, 1),
        ch=st.integers(0, 2),
        pick=st.integers(0, 1),
        data=st.just(b""),
        n=st.integers(1, 300),
    ),
)


@dataclass
class Traffic:
    """What each side has still to write (kept across back-pressure) and what was taken."""

    wire: Wire
    chans: list[int]
    ttys: list[bool]
    backlog: dict[Key, bytearray] = field(default_factory=dict)
    taken: dict[Key, bytearray] = field(default_factory=dict)
    aborted: set[int] = field(default_factory=set)
    ended: set[int] = field(default_factory=set)
    orders: dict[int, list[Resized | Signalled]] = field(default_factory=dict)
    closed: set[int] = field(default_factory=set)
    starve: Key | None = None  # a stream its receiver never consumes

    def key(self, op: Op) -> Key:
        i = op.ch % len(self.chans)
        if op.side == 0:
            return (0, self.chans[i], Stream.STDIN)
        if self.ttys[i]:
            return (1, self.chans[i], Stream.TTY)
        return (1, self.chans[i], (Stream.STDOUT, Stream.STDERR)[op.pick])

    def consume(self, k: Key, n: int) -> None:
        """The receiver of ``k`` (writing side, channel, stream) uses up ``n`` bytes."""
        if k != self.starve:
            self.wire.sides[1 - k[0]].consumed(k[1], k[2], n)

    def drain(self) -> None:
        """Every receiver consumes all it holds (but the starved stream's)."""
        for side, s in enumerate(self.wire.sides):
            for ch in self.chans:
                for stream in self.streams(1 - side, ch):
                    self.consume((1 - side, ch, stream), s.held(ch, stream))

    def streams(self, writer: int, ch: int) -> tuple[Stream, ...]:
        if writer == 0:
            return (Stream.STDIN,)
        return (Stream.TTY,) if self.ttys[self.chans.index(ch)] else (Stream.STDOUT, Stream.STDERR)

    def check_held(self) -> None:
        """What a receiver holds unconsumed never exceeds the peer's replay limit."""
        limit = self.wire.a.config.replay_limit
        for s in self.wire.sides:
            for ch in self.chans:
                for stream in Stream:
                    assert s.held(ch, stream) <= limit

    def write(self, op: Op) -> None:
        k = self.key(op)
        if k[0] == 1 or k[1] not in self.aborted:
            self.backlog.setdefault(k, bytearray()).extend(op.data)
        self.push()

    def push(self) -> None:
        for (side, ch, stream), buf in self.backlog.items():
            s = self.wire.sides[side]
            if buf and (side == 0 or s.channel_state(ch) is ChannelState.OPEN):
                n = s.send(ch, stream, bytes(buf))
                self.taken.setdefault((side, ch, stream), bytearray()).extend(buf[:n])
                del buf[:n]

    def finish(self) -> None:
        """End each channel once all its bytes are taken: EOF and exit, then close."""
        w = self.wire
        for i, ch in enumerate(self.chans):
            if ch in self.ended | self.aborted or w.t.channel_state(ch) is not ChannelState.OPEN:
                continue
            if any(buf for (_, c, _), buf in self.backlog.items() if c == ch):
                continue
            self.ended.add(ch)
            w.a.close_stdin(ch)
            w.t.exit(ch, ExitStatus(code=i))
        for e in of_type(w.events[0], Exited):
            if e.ch not in self.closed:
                self.closed.add(e.ch)
                w.a.close(e.ch)

    def abort(self, i: int) -> None:
        """The appliance closes a channel whose process still runs."""
        ch = self.chans[i % len(self.chans)]
        if ch not in self.aborted:
            self.aborted.add(ch)
            self.closed.add(ch)
            for (side, c, _), buf in self.backlog.items():
                if side == 0 and c == ch:
                    buf.clear()
            self.wire.a.close(ch)

    def order(self, op: Op) -> None:
        ch = self.chans[op.ch % len(self.chans)]
        if ch in self.aborted:
            return
        order: Resized | Signalled
        if op.pick:
            order = Resized(ch, op.n, op.n + 1)
            assert self.wire.a.resize(ch, op.n, op.n + 1)
        else:
            order = Signalled(ch, op.n)
            assert self.wire.a.signal(ch, op.n)
        self.orders.setdefault(ch, []).append(order)

    def run(self, op: Op) -> None:
        w = self.wire
        if op.kind == "write":
            self.write(op)
        elif op.kind == "order":
            self.order(op)
        elif op.kind == "flush":
            w.flush()
        elif op.kind == "deliver":
            w.deliver(op.side, op.n)
        elif op.kind == "consume":
            self.consume(self.key(op), op.n)
        else:
            w.cut()
        self.check_held()
        self.push()

    def done(self) -> bool:
        """Every channel forgotten at both ends (but the starved stream's)."""
        skip = None if self.starve is None else self.starve[1]
        sides = self.wire.sides
        return all(s.channel_state(ch) is None for s in sides for ch in self.chans if ch != skip)


def drive(
    traffic: Traffic, ops: list[Op], cuts: set[int], abort: tuple[int, int] | None = None
) -> None:
    """The random part, then run to the end with cuts at the given rounds."""
    w = traffic.wire
    for at, op in enumerate(ops):
        if abort is not None and at == abort[1]:
            traffic.abort(abort[0])
        traffic.run(op)
    for rnd in range(400):
        traffic.drain()
        traffic.push()
        traffic.finish()
        moved = w.flush()
        if rnd in cuts:  # one record each way gets through, the rest is lost
            w.deliver(0, 1)
            w.deliver(1, 1)
            w.cut()
            continue
        if not moved and rnd > max(cuts, default=0) and traffic.done():
            return
        w.deliver(0)
        w.deliver(1)
        traffic.check_held()
    raise AssertionError("the sessions did not finish")


def start(config: SessionConfig, ttys: list[bool]) -> Traffic:
    w = Wire(config)
    chans = [w.a.open_exec(ExecSpec(("cat",), tty=tty)) for tty in ttys]
    return Traffic(w, chans, ttys)


cut_rounds = st.sets(st.integers(0, 12), max_size=4)
small = st.sampled_from([1, 7, 64])


@settings(max_examples=150, deadline=None)
@given(
    ttys=st.lists(st.booleans(), min_size=1, max_size=3),
    ops=st.lists(ops, max_size=60),
    cuts=cut_rounds,
    max_data=small,
    limit=st.sampled_from([16, 100, 1 << 20]),
    abort=st.none() | st.tuples(st.integers(0, 2), st.integers(0, 60)),
    slow=st.booleans(),
)
def test_every_byte_arrives_exactly_once_in_order_across_cuts(
    ttys: list[bool],
    ops: list[Op],
    cuts: set[int],
    max_data: int,
    limit: int,
    abort: tuple[int, int] | None,
    slow: bool,
) -> None:
    config = SessionConfig(replay_limit=limit, max_data=max_data, ack_on_consume=slow)
    traffic = start(config, ttys)
    drive(traffic, ops, cuts, abort)
    w = traffic.wire
    for side in (0, 1):
        assert not of_type(w.events[side], ProtocolError)
    event(f"records lost in cuts: {'some' if w.lost else 'none'}")
    for (side, ch, stream), sent in traffic.taken.items():
        assert received(w.events[1 - side], ch, stream) == bytes(sent)
    for (_, ch, _), buf in traffic.backlog.items():
        assert not buf or ch in traffic.aborted  # BLOCK held bytes back, never lost them
    for i, ch in enumerate(traffic.chans):
        orders = [e for e in w.events[1] if isinstance(e, Resized | Signalled) and e.ch == ch]
        assert orders == traffic.orders.get(ch, [])
        exits = [] if ch in traffic.aborted else [ExitStatus(code=i)]
        assert [e.status for e in of_type(w.events[0], Exited) if e.ch == ch] == exits
        for side in (0, 1):
            assert [e for e in of_type(w.events[side], ChannelClosed) if e.ch == ch] == [
                ChannelClosed(ch)
            ]
        eofs = [e.stream for e in of_type(w.events[0], Eof) if e.ch == ch]
        assert sorted(eofs) == ([Stream.TTY] if ttys[i] else [Stream.STDOUT, Stream.STDERR])
        assert [e.stream for e in of_type(w.events[1], Eof) if e.ch == ch] == [Stream.STDIN]


@settings(max_examples=100, deadline=None)
@given(
    ttys=st.lists(st.booleans(), min_size=2, max_size=3),
    ops=st.lists(ops, max_size=60),
    cuts=cut_rounds,
    limit=small,
    fill=st.integers(1, 20),
)
def test_a_stream_nobody_reads_stalls_no_other_channel(
    ttys: list[bool], ops: list[Op], cuts: set[int], limit: int, fill: int
) -> None:
    traffic = start(SessionConfig(replay_limit=limit, max_data=5, ack_on_consume=True), ttys)
    ch0 = traffic.chans[0]
    starved = (1, ch0, Stream.TTY if ttys[0] else Stream.STDOUT)
    traffic.starve = starved
    traffic.backlog[starved] = bytearray(range(3 * limit + fill))  # more than it may hold
    drive(traffic, ops, cuts)  # returns once every other channel has ended at both ends
    w = traffic.wire
    assert not of_type(w.events[0], ProtocolError) and not of_type(w.events[1], ProtocolError)
    for (side, ch, stream), sent in traffic.taken.items():
        if ch != ch0:
            assert received(w.events[1 - side], ch, stream) == bytes(sent)
    got = received(w.events[0], ch0, starved[2])
    assert w.a.held(ch0, starved[2]) == len(got) <= limit  # the window, not the backlog
    assert len(traffic.taken[starved]) <= 2 * limit  # the peer's hold and our replay
    assert traffic.backlog[starved]  # the writer is held back
    traffic.starve = None  # the reader wakes up: everything flows and ends
    drive(traffic, [], set())
    for (side, ch, stream), sent in traffic.taken.items():
        assert received(w.events[1 - side], ch, stream) == bytes(sent)
    assert not any(traffic.backlog.values())


@settings(max_examples=100, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=20), limit=small)
def test_block_policy_holds_the_writer_to_the_replay_bound(chunks: list[bytes], limit: int) -> None:
    w = Wire(SessionConfig(replay_limit=limit, max_data=8))
    ch = w.a.open_exec(ExecSpec(("cat",)))
    w.settle()
    taken = bytearray()
    for chunk in chunks:  # nothing is delivered: the bound fills and stays full
        taken += chunk[: w.a.send(ch, Stream.STDIN, chunk)]
        w.flush()
    assert len(taken) == min(limit, sum(map(len, chunks)))
    assert w.a.room(ch, Stream.STDIN) == limit - len(taken)
    w.cut()
    w.settle()
    assert received(w.events[1], ch, Stream.STDIN) == bytes(taken)
    if len(taken) < sum(map(len, chunks)):
        assert of_type(w.events[0], Writable) == [Writable(ch, Stream.STDIN)]
    assert w.a.room(ch, Stream.STDIN) == limit


def tiles(events: list[Data | Gap], sent: bytes) -> bool:
    """Data and gaps cover [0, len(sent)) in order, each byte once, data matching."""
    at = 0
    for e in events:
        if isinstance(e, Gap):
            if e.start != at or e.end <= e.start:
                return False
            at = e.end
        else:
            if sent[at : at + len(e.data)] != e.data:
                return False
            at += len(e.data)
    return at == len(sent)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(ops, max_size=60), cuts=cut_rounds, limit=small, slow=st.booleans())
def test_drop_policy_names_exactly_the_lost_range(
    ops: list[Op], cuts: set[int], limit: int, slow: bool
) -> None:
    config = SessionConfig(replay_limit=limit, policy=Policy.DROP, max_data=5, ack_on_consume=slow)
    traffic = start(config, [False, True])  # drive checks the window: DROP respects it too
    drive(traffic, ops, cuts)
    w = traffic.wire
    assert not of_type(w.events[0], ProtocolError) and not of_type(w.events[1], ProtocolError)
    for (side, ch, stream), sent in traffic.taken.items():
        got = [
            e
            for e in w.events[1 - side]
            if isinstance(e, Data | Gap) and (e.ch, e.stream) == (ch, stream)
        ]
        assert tiles(got, bytes(sent))


def test_drop_policy_gap_for_bytes_dropped_before_they_were_sent() -> None:
    w = Wire(SessionConfig(replay_limit=40, policy=Policy.DROP))
    ch = w.a.open_exec(ExecSpec(("cat",)))
    w.settle()
    w.a.connection_down()
    w.t.connection_down()
    payload = bytes(range(100))
    assert w.a.send(ch, Stream.STDIN, payload) == 100
    w.connect()
    w.settle()
    assert of_type(w.events[1], Gap) == [Gap(ch, Stream.STDIN, 0, 60)]
    assert received(w.events[1], ch, Stream.STDIN) == payload[60:]


def test_drop_policy_gap_for_bytes_sent_then_lost_in_a_cut() -> None:
    w = Wire(SessionConfig(replay_limit=10, policy=Policy.DROP, max_data=10))
    ch = w.a.open_exec(ExecSpec(("cat",)))
    w.settle()
    w.a.send(ch, Stream.STDIN, b"0123456789")
    w.flush()
    w.a.send(ch, Stream.STDIN, b"abcdefghij")  # drops 0-9 from the buffer, sent but in flight
    w.cut()  # ... and lost
    w.settle()
    assert of_type(w.events[1], Gap) == [Gap(ch, Stream.STDIN, 0, 10)]
    assert received(w.events[1], ch, Stream.STDIN) == b"abcdefghij"


def test_a_channel_can_drop_while_the_session_blocks() -> None:
    w = Wire(SessionConfig(replay_limit=8), auto_accept=False)
    ch = w.a.open_attach()
    w.settle()
    assert w.t.accept(ch, replay_limit=4, policy=Policy.DROP)
    w.a.connection_down()
    w.t.connection_down()
    assert w.t.send(ch, Stream.STDOUT, b"0123456789") == 10  # never stalls the process
    assert w.a.send(ch, Stream.STDIN, b"0123456789") == 8  # the session's BLOCK bound
    w.connect()
    w.settle()
    assert of_type(w.events[0], Gap) == [Gap(ch, Stream.STDOUT, 0, 6)]
    assert received(w.events[0], ch, Stream.STDOUT) == b"6789"
    assert received(w.events[1], ch, Stream.STDIN) == b"01234567"


def test_resume_reports_what_arrived_and_ack_what_was_consumed() -> None:
    w = Wire(SessionConfig(replay_limit=10, ack_on_consume=True))
    ch = w.a.open_exec(ExecSpec(("cat",)))
    w.settle()
    assert w.a.send(ch, Stream.STDIN, b"01234567") == 8
    w.settle()
    assert w.t.held(ch, Stream.STDIN) == 8 and w.a.room(ch, Stream.STDIN) == 2  # no ACK yet
    w.cut()  # RESUME says 8 arrived: the appliance frees them, the window stays at 0
    w.settle()
    assert w.a.room(ch, Stream.STDIN) == 10
    assert w.a.send(ch, Stream.STDIN, b"abcdefghij") == 10
    w.settle()
    assert received(w.events[1], ch, Stream.STDIN) == b"01234567ab"  # 10 past the ACK at 0
    w.t.consumed(ch, Stream.STDIN, 5)
    w.settle()
    assert received(w.events[1], ch, Stream.STDIN) == b"01234567abcdefg"
    w.t.consumed(ch, Stream.STDIN, 100)  # more than held counts as all of it
    w.settle()
    assert received(w.events[1], ch, Stream.STDIN) == b"01234567abcdefghij"
    assert w.t.held(ch, Stream.STDIN) == 3  # arrived after that call
    w.t.consumed(ch, Stream.STDIN, 3)
    w.settle()
    assert w.t.held(ch, Stream.STDIN) == 0 and w.a.room(ch, Stream.STDIN) == 10


def test_turning_auto_ack_on_releases_what_is_held() -> None:
    w = Wire(SessionConfig(replay_limit=4, ack_on_consume=True))
    ch = w.a.open_exec(ExecSpec(("cat",)))
    w.settle()
    assert w.a.send(ch, Stream.STDIN, b"wxyz") == 4
    w.settle()
    assert w.a.room(ch, Stream.STDIN) == 0
    w.t.set_ack_on_consume(False)
    w.settle()
    assert w.t.held(ch, Stream.STDIN) == 0 and w.a.room(ch, Stream.STDIN) == 4
