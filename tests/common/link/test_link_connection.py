"""The link connection, sans-IO: two LinkConnection objects wired back to back."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from common.proto.link import frames as F
from common.proto.link.connection import Action, LinkConnection, LinkFailed
from common.proto.link.frames import ErrorCode
from common.proto.link.mux import GoAwayReceived, LinkClosingError, MuxConfig, PongReceived
from common.proto.link.mux import StreamOpened as Opened
from common.proto.link.sessions import SessionDirectory, Tomb, Verdict

SID = bytes(range(16))
SID2 = bytes(range(1, 17))


class Recorder:
    """A stream handler that records what it is told (and consumes what it gets)."""

    def __init__(self, conn: LinkConnection | None = None, sid: int = 0) -> None:
        self.conn = conn
        self.sid = sid
        self.calls: list[tuple[object, ...]] = []
        self.data = bytearray()
        self.to_send = b""

    def on_data(self, offset: int, payload: bytes | bytearray) -> None:
        self.calls.append(("data", offset, len(payload)))
        self.data += payload
        if self.conn is not None:
            self.conn.consumed(self.sid, len(payload))

    def on_ack(self, offset: int, fin: bool) -> None:
        self.calls.append(("ack", offset, fin))

    def on_eof(self, offset: int) -> None:
        self.calls.append(("eof", offset))

    def on_reset(self, code: int, reason: str) -> None:
        self.calls.append(("reset", code, reason))

    def on_credit(self) -> None:
        self.calls.append(("credit",))

    def on_batch_end(self) -> None:
        self.calls.append(("batch",))

    def produce(self, max_bytes: int) -> bool:
        assert self.conn is not None
        n = self.conn.send_data(self.sid, 0, self.to_send[:max_bytes])
        self.to_send = self.to_send[n:]
        return bool(self.to_send)


class Acceptor:
    """An ``on_open`` that attaches a Recorder to every new stream."""

    def __init__(self) -> None:
        self.conn: LinkConnection | None = None
        self.opened: list[Opened] = []
        self.streams: dict[int, Recorder] = {}

    def __call__(self, ev: Opened) -> None:
        assert self.conn is not None
        self.opened.append(ev)
        h = self.streams[ev.stream_id] = Recorder(self.conn, ev.stream_id)
        self.conn.attach(ev.stream_id, h)


def wire(src: LinkConnection) -> bytes:
    return b"".join(bytes(c) for c in src.data_to_send())


def xfer(src: LinkConnection, dst: LinkConnection, now: float = 0.0) -> Sequence[Action]:
    return dst.receive_data(wire(src), now)


def pair(cfg: MuxConfig | None = None) -> tuple[LinkConnection, LinkConnection, Acceptor]:
    acc = Acceptor()
    c = LinkConnection(cfg, client=True, now=0.0)
    s = LinkConnection(cfg, client=False, now=0.0, on_open=acc)
    acc.conn = s
    assert xfer(c, s) == () and xfer(s, c) == ()
    assert c.ready and s.ready
    return c, s, acc


def test_open_data_eof_ack_and_credit_are_routed_to_the_handlers() -> None:
    c, s, acc = pair()
    h = Recorder(c, 0)
    h.sid = sid = c.open(h, SID, 0, b"hdr", resume=False)
    assert sid == 1 and c.handlers == {1: h}
    assert xfer(c, s) == ()
    assert acc.opened == [Opened(1, SID, 0, b"hdr", False)]
    far = acc.streams[1]
    assert far.calls == [("credit",)]  # the server's own grant arrives first as credit
    xfer(s, c)  # its WINDOW
    assert h.calls == [("credit",)]
    assert c.send_data(sid, 0, b"hello") == 5
    c.send_eof(sid, 5)
    assert xfer(c, s) == ()
    assert far.calls[1:] == [("data", 0, 5), ("eof", 5)]
    assert bytes(far.data) == b"hello"
    assert s.touched == {1: far} and s.eof_seen
    s.batch_end()
    assert far.calls[-1] == ("batch",) and not s.touched and not s.eof_seen
    s.send_ack(1, 5, True)
    xfer(s, c)
    assert ("ack", 5, True) in h.calls


def test_writer_turns_go_round_robin_up_to_the_high_water_mark() -> None:
    c, s, acc = pair()
    a, b = Recorder(c), Recorder(c)
    a.sid = c.open(a, SID, 0, b"", resume=False)
    b.sid = c.open(b, SID2, 0, b"", resume=False)
    xfer(c, s)
    xfer(s, c)
    a.to_send, b.to_send = b"a" * 3000, b"b" * 3000
    assert c.want_send(a.sid) and c.want_send(b.sid)
    assert not c.want_send(a.sid)  # already has its turn
    assert c.has_turns
    c.fill_turns(high_water=1 << 20, quantum=1000)
    c.fill_turns(high_water=1 << 20, quantum=1000)
    assert len(a.to_send) == len(b.to_send) == 1000
    xfer(c, s)
    assert bytes(acc.streams[a.sid].data) == b"a" * 2000
    assert bytes(acc.streams[b.sid].data) == b"b" * 2000
    c.detach(b.sid, ErrorCode.CANCEL, "bye")
    c.fill_turns(high_water=1 << 20, quantum=1000)
    assert a.to_send == b"" and not c.has_turns


def test_reset_carries_its_code_and_forgets_the_handler() -> None:
    c, s, _acc = pair()
    h = Recorder(c)
    h.sid = c.open(h, SID, 0, b"", resume=False)
    xfer(c, s)
    s.detach(h.sid, ErrorCode.GAP, "hole at 42")
    assert s.handlers == {}
    xfer(s, c)
    assert h.calls[-1] == ("reset", ErrorCode.GAP, "hole at 42")
    assert c.handlers == {}


def test_detach_without_sending_queues_nothing() -> None:
    c, _s, _ = pair()
    h = Recorder(c)
    h.sid = c.open(h, SID, 0, b"", resume=False)
    wire(c)
    c.detach(h.sid, ErrorCode.CANCEL, "", send=False)
    assert c.pending_output == 0 and c.handlers == {}


def test_an_end_that_accepts_no_streams_refuses_them() -> None:
    c = LinkConnection(client=True, now=0.0)
    s = LinkConnection(client=False, now=0.0)
    xfer(c, s)
    xfer(s, c)
    h = Recorder(c)
    h.sid = c.open(h, SID, 0, b"", resume=False)
    xfer(c, s)
    xfer(s, c)
    assert h.calls[-1] == ("reset", ErrorCode.REFUSED, "this end accepts no streams")


def test_data_for_a_stream_nobody_handles_is_consumed() -> None:
    c, s, _acc = pair()
    h = Recorder(c)
    h.sid = c.open(h, SID, 0, b"", resume=False)
    xfer(c, s)
    xfer(s, c)
    s.handlers.clear()  # nobody took it over
    before = s.mux.budget_used
    c.send_data(h.sid, 0, b"x" * 1000)
    xfer(c, s)
    # consumed: the 1000 bytes of credit spent are not held as received bytes
    assert s.mux.budget_used == before - 1000


def test_goaway_and_pong_are_returned_as_actions() -> None:
    c, s, _ = pair()
    h = Recorder(c)
    h.sid = c.open(h, SID, 0, b"", resume=False)
    s.goaway("draining")
    assert s.draining
    actions = xfer(s, c)
    assert actions == [GoAwayReceived(0, ErrorCode.NO_ERROR, "draining")]
    assert c.draining
    assert h.calls[-1] == ("reset", ErrorCode.REFUSED, "peer is draining")
    try:
        c.open(Recorder(), SID2, 0, b"", resume=False)
    except LinkClosingError:
        pass
    else:
        raise AssertionError("a draining link opened a stream")
    seq = c.ping(1.0)
    xfer(c, s)
    actions = xfer(s, c, now=1.25)
    assert actions == [PongReceived(0.25, seq)]
    assert c.rtt == 0.25 and c.pong_seq == seq


def test_garbage_is_a_link_failure_with_its_code() -> None:
    _c, s, _ = pair()
    bad = F.encode(F.Window(1, 5))  # credit for a stream nobody opened
    assert s.receive_data(bad, 0.0) == [
        LinkFailed(ErrorCode.PROTOCOL, "frame for stream 1, which was never opened")
    ]
    fresh = LinkConnection(client=False, now=0.0)
    (failed,) = fresh.receive_data(b"\xff" * 64, 0.0)
    assert isinstance(failed, LinkFailed) and failed.code == ErrorCode.PROTOCOL


def test_data_beyond_credit_is_a_flow_control_failure() -> None:
    c, s, _ = pair()
    h = Recorder(c)
    h.sid = c.open(h, SID, 0, b"", resume=False)
    xfer(c, s)
    xfer(s, c)
    credit = c.send_credit(h.sid)
    too_much = F.data_header(h.sid, 0, credit + 1) + b"x" * (credit + 1)
    s.receive_data(wire(c), 0.0)
    (failed,) = s.receive_data(too_much, 0.0)
    assert isinstance(failed, LinkFailed) and failed.code == ErrorCode.FLOW_CONTROL


def test_a_silent_peer_times_out() -> None:
    cfg = MuxConfig(ping_interval=1.0, dead_after=3.0)
    c, _, _ = pair(cfg)
    assert c.tick(1.5) is None
    failed = c.tick(3.5)
    assert failed is not None and failed.code == ErrorCode.TIMEOUT
    assert failed.reason.startswith("peer is silent: nothing received for 3.5s")


class Owner:
    def __init__(self, peer_identity: str) -> None:
        self.peer_identity = peer_identity


def test_judge_open_answers_ended_and_refused_sessions_itself() -> None:
    directory: SessionDirectory[Owner] = SessionDirectory()
    known = Owner("relay-a")
    directory.sessions[SID] = known
    directory.finished(SID2, Tomb(7, True, ErrorCode.NO_ERROR, ""))
    opened: list[tuple[Verdict, Owner | None]] = []
    c = LinkConnection(client=True, now=0.0)
    s = LinkConnection(client=False, now=0.0)

    def on_open(ev: Opened) -> None:
        d = s.judge_open(ev, directory, "relay-a")
        opened.append((d.verdict, d.session))

    s.on_open = on_open
    xfer(c, s)
    xfer(s, c)
    ended, attach, new = Recorder(c), Recorder(c), Recorder(c)
    ended.sid = c.open(ended, SID2, 0, b"", resume=True)
    attach.sid = c.open(attach, SID, 0, b"", resume=True)
    new.sid = c.open(new, bytes(16), 0, b"", resume=False)
    xfer(c, s)
    assert opened == [(Verdict.ENDED, None), (Verdict.ATTACH, known), (Verdict.NEW, None)]
    xfer(s, c)
    assert ("ack", 7, True) in ended.calls
    assert ended.calls[-1] == ("reset", ErrorCode.NO_ERROR, "session already complete")
    foreign = Recorder(c)
    foreign.sid = c.open(foreign, SID, 0, b"", resume=True)
    s.on_open = lambda ev: opened.append((s.judge_open(ev, directory, "relay-b").verdict, None))
    xfer(c, s)
    xfer(s, c)
    assert foreign.calls[-1] == ("reset", ErrorCode.REFUSED, "session belongs to another peer")


def feed(conn: LinkConnection, chunk: bytes) -> int:
    """Receive ``chunk`` (or its head) the way the reader does: into the buffer the
    connection offers (the rest of a large DATA payload) if any, else as data."""
    target = conn.receive_buffer()
    if target is None:
        assert conn.receive_data(chunk, 0.0) == ()
        return len(chunk)
    n = min(len(target), len(chunk))
    target[:n] = chunk[:n]
    assert conn.received_in_place(n, 0.0) == ()
    return n


@settings(max_examples=50, deadline=None)
@given(
    payload=st.binary(min_size=1, max_size=70000),
    cuts=st.lists(st.integers(min_value=1, max_value=5000), max_size=20),
)
def test_any_chunking_delivers_the_same(payload: bytes, cuts: list[int]) -> None:
    c, s, acc = pair(MuxConfig(max_payload=32 * 1024))  # large enough to go in place
    h = Recorder(c)
    h.sid = c.open(h, SID, 0, b"hdr", resume=False)
    xfer(c, s)
    xfer(s, c)
    off = 0
    while off < len(payload):
        off += c.send_data(h.sid, off, payload[off:])
    c.send_eof(h.sid, len(payload))
    stream = wire(c)
    pos = 0
    for cut in cuts:
        if pos >= len(stream):
            break
        pos += feed(s, stream[pos : pos + cut])
    while pos < len(stream):
        pos += feed(s, stream[pos:])
    far = acc.streams[h.sid]
    assert bytes(far.data) == payload
    assert far.calls[-1] == ("eof", len(payload))
