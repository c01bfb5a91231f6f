"""common.proto.session.session: channels over one connection, and what a bad record costs.

``Wire`` (two Sessions joined by a connection that can be cut) is shared with the
resume tests.
"""

from __future__ import annotations

from collections import deque
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.proto.session.channels import (
    AttachRequested,
    ChannelClosed,
    ChannelOpened,
    ChannelState,
    ChannelStateError,
    Data,
    Eof,
    Event,
    ExecRequested,
    Exited,
    OpenRefused,
    ProtocolError,
    Resized,
    Resumed,
    Role,
    Signalled,
)
from common.proto.session.messages import (
    CAPS,
    OPTIONAL,
    DataMsg,
    ErrorCode,
    ExecSpec,
    ExitStatus,
    Resume,
    Stream,
    encode,
)
from common.proto.session.session import Session, SessionConfig, SessionState

SID = bytes(range(16))
E = TypeVar("E")


class Wire:
    """An appliance and a tether Session joined by a connection that can be cut."""

    def __init__(self, config: SessionConfig | None = None, *, auto_accept: bool = True) -> None:
        self.a = Session(Role.APPLIANCE, SID, config)
        self.t = Session(Role.TETHER, None, config)
        self.sides = (self.a, self.t)
        self.flight: tuple[deque[bytes], deque[bytes]] = (deque(), deque())
        self.events: tuple[list[Event], list[Event]] = ([], [])
        self.auto_accept = auto_accept
        self.now = 0.0
        self.lost = 0  # records lost in flight by cuts
        self.connect()

    def connect(self) -> None:
        for s in self.sides:
            s.connection_up(self.now)

    def cut(self) -> None:
        """The connection dies: what is in flight is lost; a new one follows."""
        for side, s in enumerate(self.sides):
            self.lost += len(self.flight[side])
            self.flight[side].clear()
            s.connection_down()
        self.connect()

    def flush(self) -> int:
        moved = 0
        for side, s in enumerate(self.sides):
            records = s.records_to_send()
            self.flight[side].extend(records)
            moved += len(records)
        return moved

    def deliver(self, side: int, k: int | None = None) -> None:
        """Hand up to ``k`` records sent by ``side`` to the other side."""
        q, peer = self.flight[side], self.sides[1 - side]
        n = len(q) if k is None else min(k, len(q))
        for _ in range(n):
            self.now += 0.001
            events = peer.receive_record(q.popleft(), self.now)
            self.events[1 - side].extend(events)
            self.react(1 - side, events)

    def react(self, side: int, events: list[Event]) -> None:
        for e in events:
            if side == 1 and self.auto_accept and isinstance(e, ExecRequested | AttachRequested):
                self.t.accept(e.ch)

    def settle(self, rounds: int = 200) -> None:
        """Run the connection until nothing moves."""
        for _ in range(rounds):
            if not self.flush():
                return
            self.deliver(0)
            self.deliver(1)
        raise AssertionError("the sessions did not settle")


def received(events: list[Event], ch: int, stream: Stream) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, Data) and (e.ch, e.stream) == (ch, stream)
    )


def of_type(events: list[Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def test_an_exec_spec_arrives_whole_and_its_streams_flow_both_ways() -> None:
    w = Wire()
    spec = ExecSpec(
        ("sh", "-c", "cat; exit 3"), (("A", "1"), ("B", "é")), "/srv", "app", False, 0, 0, 5000
    )
    ch = w.a.open_exec(spec)
    w.settle()
    assert of_type(w.events[1], ExecRequested) == [ExecRequested(ch, spec)]
    assert of_type(w.events[0], ChannelOpened) == [ChannelOpened(ch)]
    w.a.send(ch, Stream.STDIN, b"hello ")
    w.a.send(ch, Stream.STDIN, b"world")
    w.a.close_stdin(ch)
    w.t.send(ch, Stream.STDOUT, b"out")
    w.t.send(ch, Stream.STDERR, b"err")
    w.t.exit(ch, ExitStatus(code=3))
    w.settle()
    assert received(w.events[1], ch, Stream.STDIN) == b"hello world"
    assert of_type(w.events[1], Eof) == [Eof(ch, Stream.STDIN)]
    assert received(w.events[0], ch, Stream.STDOUT) == b"out"
    assert received(w.events[0], ch, Stream.STDERR) == b"err"
    assert of_type(w.events[0], Exited) == [Exited(ch, ExitStatus(code=3))]
    # Exited comes after both EOFs
    kinds = [type(e) for e in w.events[0] if isinstance(e, Eof | Exited)]
    assert kinds == [Eof, Eof, Exited]


def test_close_after_exit_forgets_the_channel_at_both_ends() -> None:
    w = Wire()
    ch = w.a.open_exec(ExecSpec(("true",)))
    w.settle()
    w.a.close_stdin(ch)
    w.t.exit(ch, ExitStatus(signal=9))
    w.settle()
    assert of_type(w.events[0], Exited) == [Exited(ch, ExitStatus(signal=9))]
    w.a.close(ch)
    w.settle()
    assert of_type(w.events[1], ChannelClosed) == [ChannelClosed(ch)]
    assert of_type(w.events[0], ChannelClosed) == [ChannelClosed(ch)]
    assert (w.a.channel_count, w.t.channel_count) == (0, 0)
    assert w.t.send(ch, Stream.STDOUT, b"late") == 0  # a closed channel takes nothing
    w.t.exit(ch, ExitStatus(code=0))  # nor an exit: the race with close is harmless


def test_a_tty_channel_carries_resize_and_signals() -> None:
    w = Wire()
    ch = w.a.open_attach(tty=True)
    w.a.resize(ch, 40, 120)
    w.settle()
    w.a.signal(ch, 2)
    w.t.send(ch, Stream.TTY, b"$ ")
    w.settle()
    assert of_type(w.events[1], AttachRequested) == [AttachRequested(ch, True)]
    assert of_type(w.events[1], Resized) == [Resized(ch, 40, 120)]
    assert of_type(w.events[1], Signalled) == [Signalled(ch, 2)]
    assert received(w.events[0], ch, Stream.TTY) == b"$ "
    with pytest.raises(ChannelStateError):
        w.t.send(ch, Stream.STDOUT, b"no stdout on a tty")


def test_a_refused_exec_is_reported_and_forgotten() -> None:
    w = Wire(auto_accept=False)
    ch = w.a.open_exec(ExecSpec(("nope",)))
    w.a.send(ch, Stream.STDIN, b"held until opened")
    w.settle()
    w.t.reject(ch, "no such file")
    w.settle()
    assert of_type(w.events[0], OpenRefused) == [OpenRefused(ch, "no such file")]
    assert not of_type(w.events[1], Data)
    assert (w.a.channel_count, w.t.channel_count) == (0, 0)


def test_closing_before_the_tether_answers_ends_the_channel_at_both_ends() -> None:
    w = Wire(auto_accept=False)
    ch = w.a.open_exec(ExecSpec(("sleep", "9")))
    w.a.close(ch)
    w.settle()
    assert w.t.accept(ch) is False
    assert of_type(w.events[1], ChannelClosed) == [ChannelClosed(ch)]
    assert (w.a.channel_count, w.t.channel_count) == (0, 0)


def test_only_the_appliance_opens_and_only_the_tether_exits() -> None:
    w = Wire()
    with pytest.raises(ChannelStateError):
        w.t.open_exec(ExecSpec(("x",)))
    ch = w.a.open_exec(ExecSpec(("x",)))
    with pytest.raises(ChannelStateError):
        w.a.exit(ch, ExitStatus(code=0))
    with pytest.raises(ChannelStateError):
        w.a.send(99, Stream.STDIN, b"")


def test_a_bad_record_costs_the_connection_not_the_session() -> None:
    w = Wire()
    ch = w.a.open_exec(ExecSpec(("cat",)))
    w.settle()
    w.t.send(ch, Stream.STDOUT, b"before ")
    w.settle()
    events = w.a.receive_record(b"\xff\x00garbage", 1.0)
    assert events == [ProtocolError(ErrorCode.UNKNOWN_TYPE, "message type 0xff")]
    assert w.a.state is SessionState.BROKEN
    w.t.send(ch, Stream.STDOUT, b"after")
    w.flush()
    w.deliver(1)  # the broken connection's records are ignored
    assert received(w.events[0], ch, Stream.STDOUT) == b"before "
    w.cut()
    w.settle()
    assert received(w.events[0], ch, Stream.STDOUT) == b"before after"


@pytest.mark.parametrize(
    ("record", "code"),
    [
        (encode(DataMsg(7, Stream.STDOUT, 0, b"x")), ErrorCode.UNKNOWN_CHANNEL),
        (encode(DataMsg(1, Stream.STDOUT, 5, b"x")), ErrorCode.OFFSET),
        (encode(DataMsg(1, Stream.STDIN, 0, b"x")), ErrorCode.CHANNEL_STATE),
        (encode(Resume(1, 0, SID, 0, ())), ErrorCode.UNEXPECTED),
    ],
    ids=["unknown-channel", "hole", "wrong-direction", "second-resume"],
)
def test_wrong_records_are_protocol_errors(record: bytes, code: ErrorCode) -> None:
    w = Wire()
    w.a.open_exec(ExecSpec(("cat",)))
    w.settle()
    events = w.a.receive_record(record, 1.0)
    assert [e.code for e in events if isinstance(e, ProtocolError)] == [code]


def test_an_optional_message_from_a_newer_peer_is_ignored() -> None:
    w = Wire()
    w.settle()
    assert w.a.receive_record(bytes([0x7A, OPTIONAL, 1, 2, 3]), 1.0) == []
    assert w.a.state is SessionState.LIVE


def test_a_peer_that_lost_the_session_is_refused() -> None:
    w = Wire()
    ch = w.a.open_exec(ExecSpec(("cat",)))
    w.settle()
    assert w.t.session_id == SID
    assert w.a.channel_state(ch) is ChannelState.OPEN
    fresh = Session(Role.TETHER)  # the tether restarted
    fresh.connection_up(2.0)
    w.a.connection_down()
    w.a.connection_up(2.0)
    events = w.a.receive_record(fresh.records_to_send()[0], 2.0)
    assert [e.code for e in events if isinstance(e, ProtocolError)] == [ErrorCode.SESSION_MISMATCH]
    other = Session(Role.APPLIANCE, bytes(16 * [7]))
    other.connection_up(2.0)
    w.t.connection_down()
    w.t.connection_up(2.0)
    events = w.t.receive_record(other.records_to_send()[0], 2.0)
    assert [e.code for e in events if isinstance(e, ProtocolError)] == [ErrorCode.SESSION_MISMATCH]


def test_resume_reports_version_and_nothing_but_resume_goes_first() -> None:
    w = Wire()
    ch = w.a.open_exec(ExecSpec(("cat",)))
    assert len(w.a.records_to_send()) == 1  # RESUME only, until the peer's arrives
    w.flush()
    w.deliver(0)
    w.deliver(1)
    assert of_type(w.events[0], Resumed) == [Resumed(1, CAPS)]
    assert w.a.channel_state(ch) is ChannelState.OPENING


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_garbage_records_cost_only_the_connection(garbage: list[bytes]) -> None:
    w = Wire()
    ch = w.a.open_exec(ExecSpec(("cat",)))
    w.settle()
    for record in garbage:
        events = w.t.receive_record(record, 1.0)
        errors = [e for e in events if isinstance(e, ProtocolError)]
        assert len(errors) <= 1 and bool(errors) == (w.t.state is SessionState.BROKEN)
        if errors:
            w.cut()
            w.settle()
    w.cut()
    w.a.send(ch, Stream.STDIN, b"still here")
    w.settle()
    assert received(w.events[1], ch, Stream.STDIN) == b"still here"


def test_forgetting_a_channel_survives_a_cut_before_the_last_ack() -> None:
    w = Wire()
    ch = w.a.open_exec(ExecSpec(("true",)))
    w.settle()
    w.a.close_stdin(ch)
    w.t.exit(ch, ExitStatus(code=0))
    w.settle()
    w.a.close(ch)
    w.flush()
    w.deliver(0)  # the tether takes the CLOSE, answers, forgets the channel ...
    w.flush()
    assert w.t.channel_count == 0
    w.cut()  # ... and its answer is lost
    w.settle()
    assert (w.a.channel_count, w.t.channel_count) == (0, 0)
    assert of_type(w.events[0], ChannelClosed) == [ChannelClosed(ch)]
    assert not of_type(w.events[0] + w.events[1], ProtocolError)


def test_the_tether_may_answer_an_exec_after_a_cut() -> None:
    w = Wire(auto_accept=False)
    ch = w.a.open_exec(ExecSpec(("cat",)))
    w.a.send(ch, Stream.STDIN, b"typed early")
    w.settle()
    w.cut()
    assert w.t.accept(ch)
    w.t.send(ch, Stream.STDOUT, b"ready")
    w.settle()
    assert of_type(w.events[0], ChannelOpened) == [ChannelOpened(ch)]
    assert received(w.events[1], ch, Stream.STDIN) == b"typed early"
    assert received(w.events[0], ch, Stream.STDOUT) == b"ready"


def test_bad_arguments_are_refused_at_the_call_and_leave_the_session_intact() -> None:
    w = Wire(SessionConfig(max_control=2))
    ch = w.a.open_exec(ExecSpec(("cat",)))
    with pytest.raises(ValueError):
        w.a.resize(ch, 70_000, 80)
    with pytest.raises(ValueError):
        w.a.open_exec(ExecSpec(("x" * 70_000,)))
    assert w.a.resize(ch, 24, 80)
    assert not w.a.signal(ch, 15)  # two control messages await their ACK
    w.settle()
    assert w.a.signal(ch, 15)
    w.settle()
    assert of_type(w.events[1], Resized) == [Resized(ch, 24, 80)]
    assert of_type(w.events[1], Signalled) == [Signalled(ch, 15)]
    with pytest.raises(ValueError):
        w.t.exit(ch, ExitStatus(code=1 << 40))
    assert w.t.channel_state(ch) is ChannelState.OPEN


def test_a_restarted_tether_makes_the_appliance_refuse_on_the_first_connection() -> None:
    """The appliance's RESUME reaches the fresh tether before the tether's own goes out:
    the tether keeps its RESUME (zeros) going, and the appliance meets SESSION_MISMATCH."""
    w = Wire()
    ch = w.a.open_exec(ExecSpec(("cat",)))
    w.settle()
    w.t.send(ch, Stream.STDOUT, b"x")
    w.settle()
    fresh = Session(Role.TETHER)  # the tether restarted
    w.a.connection_down()
    w.a.connection_up(2.0)
    fresh.connection_up(2.0)
    assert fresh.receive_record(w.a.records_to_send()[0], 2.0) == []  # before it sent RESUME
    assert fresh.state is SessionState.UNKNOWN and fresh.session_id is None
    out = fresh.records_to_send()
    assert len(out) == 1
    events = w.a.receive_record(out[0], 2.0)
    assert [e.code for e in events if isinstance(e, ProtocolError)] == [ErrorCode.SESSION_MISMATCH]
    # the appliance starts anew; the tether adopts it on the next connection
    new = Session(Role.APPLIANCE, bytes(16 * [9]))
    new.open_attach()
    fresh.connection_down()
    for s in (new, fresh):
        s.connection_up(3.0)
    assert of_type(fresh.receive_record(new.records_to_send()[0], 3.0), Resumed) == [
        Resumed(1, CAPS)
    ]
    assert fresh.session_id == bytes(16 * [9])
    assert fresh.state.value == SessionState.LIVE.value  # (mypy narrowed it to UNKNOWN)
    assert of_type(new.receive_record(fresh.records_to_send()[0], 3.0), Resumed) == [
        Resumed(1, CAPS)
    ]


def test_zeros_from_a_tether_whose_messages_arrived_are_a_mismatch() -> None:
    """The appliance took the tether's OPENED but the ACK of its OPEN was lost."""
    w = Wire()
    w.a.open_exec(ExecSpec(("cat",)))
    w.flush()
    w.deliver(0)
    w.deliver(1)  # both RESUMEs: live
    w.flush()
    w.deliver(0)  # OPEN_EXEC reaches the tether
    w.flush()
    w.deliver(1)  # its ACK and OPENED reach the appliance, whose ACK is never sent
    assert w.a.channel_state(1) is ChannelState.OPEN
    fresh = Session(Role.TETHER)
    fresh.connection_up(2.0)
    w.a.connection_down()
    w.a.connection_up(2.0)
    events = w.a.receive_record(fresh.records_to_send()[0], 2.0)
    assert [e.code for e in events if isinstance(e, ProtocolError)] == [ErrorCode.SESSION_MISMATCH]


@pytest.mark.parametrize(("caps", "flag"), [(CAPS, True), (0, False)])
def test_timed_out_reaches_only_an_appliance_that_offers_it(caps: int, flag: bool) -> None:
    """An older appliance (no CAP_EXIT_TIMED_OUT) gets the plain signal it knows."""
    w = Wire()
    w.a = Session(Role.APPLIANCE, SID, SessionConfig(caps=caps))
    w.sides = (w.a, w.t)
    w.a.connection_up(0.0)
    ch = w.a.open_exec(ExecSpec(("sleep", "60"), timeout_ms=10))
    w.settle()
    w.t.exit(ch, ExitStatus(signal=9, timed_out=True))
    w.settle()
    assert of_type(w.events[0], Exited) == [Exited(ch, ExitStatus(signal=9, timed_out=flag))]
    assert w.a.peer_caps == caps
