"""Channels of a session: their states, the transition table, and the events they raise.

The appliance opens every channel (OPEN_EXEC or OPEN_ATTACH with a fresh id, ids only
grow); the tether answers OPENED or OPEN_FAILED. Per channel the appliance writes STDIN
and the tether writes STDOUT and STDERR (tty off) or TTY (tty on).

State per end (``TRANSITIONS`` is the whole table; a pair not in it is refused: a
``ChannelStateError`` for a local call, ``ErrorCode.CHANNEL_STATE`` from the wire)::

    OPENING    appliance: OPEN sent, no answer yet (its STDIN is held, not sent)
    REQUESTED  tether: OPEN received, the adapter has not answered
    OPEN       both: streams flow
    CLOSING    we sent CLOSE, the peer's CLOSE has not been taken
    CLOSED     both CLOSEs taken; the channel is forgotten once our streams are acked

Ordering: control messages (OPEN, RESIZE, SIGNAL, EXIT, CLOSE) travel in one numbered
sequence per direction, stream bytes in their own; after a break the two are resent
separately. So whoever sends EXIT or CLOSE first writes EOF on all its streams, and the
receiver takes an EXIT or CLOSE only once every stream the peer writes has reached EOF:
``Exited`` and ``ChannelClosed`` always come after the last ``Data`` of the channel.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from common.proto.session.messages import (
    Ack,
    Close,
    DataMsg,
    EofMsg,
    ErrorCode,
    ExecSpec,
    Exit,
    ExitStatus,
    GapMsg,
    MessageError,
    Opened,
    OpenFailed,
    Resize,
    Signal,
    Stream,
)
from common.proto.session.replay import InStream, OutStream, Policy, SendData, SendGap


class Role(enum.Enum):
    APPLIANCE = "appliance"
    TETHER = "tether"


class ChannelState(enum.Enum):
    OPENING = "opening"
    REQUESTED = "requested"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Input(enum.Enum):
    SEND_OPEN = "send-open"
    RECV_OPEN = "recv-open"
    SEND_OPENED = "send-opened"
    RECV_OPENED = "recv-opened"
    SEND_OPEN_FAILED = "send-open-failed"
    RECV_OPEN_FAILED = "recv-open-failed"
    SEND_CONTROL = "send-control"  # RESIZE, SIGNAL (appliance) or EXIT (tether)
    RECV_CONTROL = "recv-control"
    SEND_CLOSE = "send-close"
    RECV_CLOSE = "recv-close"


S, In = ChannelState, Input
TRANSITIONS: dict[tuple[ChannelState | None, Input], ChannelState] = {
    (None, In.SEND_OPEN): S.OPENING,
    (None, In.RECV_OPEN): S.REQUESTED,
    (S.OPENING, In.RECV_OPENED): S.OPEN,
    (S.OPENING, In.RECV_OPEN_FAILED): S.CLOSED,
    (S.OPENING, In.SEND_CONTROL): S.OPENING,
    (S.OPENING, In.SEND_CLOSE): S.CLOSING,
    (S.REQUESTED, In.SEND_OPENED): S.OPEN,
    (S.REQUESTED, In.SEND_OPEN_FAILED): S.CLOSED,
    (S.REQUESTED, In.RECV_CONTROL): S.REQUESTED,
    (S.REQUESTED, In.RECV_CLOSE): S.CLOSED,
    (S.OPEN, In.SEND_CONTROL): S.OPEN,
    (S.OPEN, In.RECV_CONTROL): S.OPEN,
    (S.OPEN, In.SEND_CLOSE): S.CLOSING,
    (S.OPEN, In.RECV_CLOSE): S.CLOSED,
    (S.CLOSING, In.RECV_OPENED): S.CLOSING,
    (S.CLOSING, In.RECV_OPEN_FAILED): S.CLOSED,
    (S.CLOSING, In.RECV_CONTROL): S.CLOSING,
    (S.CLOSING, In.RECV_CLOSE): S.CLOSED,
}
del S, In


class ChannelStateError(Exception):
    """A local call the channel's state does not allow."""


# ---------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class ChannelOpened:
    ch: int


@dataclass(frozen=True, slots=True)
class OpenRefused:
    ch: int
    reason: str


@dataclass(frozen=True, slots=True)
class ExecRequested:
    ch: int
    spec: ExecSpec


@dataclass(frozen=True, slots=True)
class AttachRequested:
    ch: int
    tty: bool
    rows: int = 0  # the pty's size before anything is relayed (0: none was given)
    cols: int = 0


@dataclass(frozen=True, slots=True)
class Data:
    ch: int
    stream: Stream
    data: bytes


@dataclass(frozen=True, slots=True)
class Eof:
    ch: int
    stream: Stream


@dataclass(frozen=True, slots=True)
class Gap:
    ch: int
    stream: Stream
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Resized:
    ch: int
    rows: int
    cols: int


@dataclass(frozen=True, slots=True)
class Signalled:
    ch: int
    signo: int


@dataclass(frozen=True, slots=True)
class Exited:
    ch: int
    status: ExitStatus


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    ch: int


@dataclass(frozen=True, slots=True)
class Writable:
    """A stream that refused bytes (BLOCK policy) has room again."""

    ch: int
    stream: Stream


@dataclass(frozen=True, slots=True)
class Resumed:
    """The peer's RESUME arrived: the connection carries the session again."""

    version: int
    caps: int


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The peer sent something wrong: drop this connection; the session survives."""

    code: ErrorCode
    detail: str


Event = (
    ChannelOpened
    | OpenRefused
    | ExecRequested
    | AttachRequested
    | Data
    | Eof
    | Gap
    | Resized
    | Signalled
    | Exited
    | ChannelClosed
    | Writable
    | Resumed
    | ProtocolError
)


# ---------------------------------------------------------------- one channel
def streams_of(role: Role, tty: bool) -> tuple[tuple[Stream, ...], tuple[Stream, ...]]:
    """(streams this end writes, streams it reads) for a channel."""
    appliance_out = (Stream.STDIN,)
    tether_out = (Stream.TTY,) if tty else (Stream.STDOUT, Stream.STDERR)
    if role is Role.APPLIANCE:
        return appliance_out, tether_out
    return tether_out, appliance_out


class Channel:
    """One end of one channel: its state, its streams, and what waits for their EOFs."""

    __slots__ = (
        "ch",
        "close_pending",
        "exit_pending",
        "inp",
        "opened",
        "out",
        "role",
        "state",
        "tty",
    )

    def __init__(
        self, ch: int, role: Role, tty: bool, state: ChannelState, limit: int, policy: Policy
    ) -> None:
        self.ch = ch
        self.role = role
        self.tty = tty
        self.state = state
        self.opened = False  # open at both ends: OPENED sent (tether) or received (appliance)
        out, inp = streams_of(role, tty)
        self.out = {s: OutStream(limit, policy) for s in out}
        self.inp = {s: InStream() for s in inp}
        self.exit_pending: ExitStatus | None = None
        self.close_pending = False

    def set_replay(self, limit: int, policy: Policy) -> None:
        """Bound our streams differently; only before anything was written."""
        if any(s.end for s in self.out.values()):
            raise ChannelStateError(f"channel {self.ch} has written already")
        self.out = {k: OutStream(limit, policy) for k in self.out}

    def step(self, event: Input) -> ChannelState:
        """Apply ``event`` per the table; KeyError if the table has no such move."""
        self.state = TRANSITIONS[(self.state, event)]
        return self.state

    def allows(self, event: Input) -> bool:
        return (self.state, event) in TRANSITIONS

    @property
    def inputs_ended(self) -> bool:
        return all(s.eof for s in self.inp.values())

    @property
    def finished(self) -> bool:
        """Closed both ways and every byte we wrote acknowledged: safe to forget."""
        if self.state is not ChannelState.CLOSED:
            return False
        return not self.opened or all(s.done for s in self.out.values())

    def end_output(self) -> None:
        for s in self.out.values():
            if not s.eof:
                s.write_eof()

    def instream(self, stream: Stream) -> InStream:
        """The stream the peer writes, for a record that carries it."""
        s = self.inp.get(stream)
        if s is None or not self.opened:
            raise MessageError(ErrorCode.CHANNEL_STATE, f"{stream.name} on channel {self.ch}")
        return s

    def outstream(self, stream: Stream) -> OutStream:
        """The stream we write, for a local call."""
        s = self.out.get(stream)
        if s is None or self.state is ChannelState.REQUESTED:
            raise ChannelStateError(f"cannot write {stream.name} on channel {self.ch}")
        return s

    def outgoing(self, max_data: int) -> Iterator[DataMsg | GapMsg | EofMsg]:
        """Everything our streams have to transmit on this connection."""
        for stream, s in self.out.items():
            while (item := s.next_item(max_data)) is not None:
                if isinstance(item, SendData):
                    yield DataMsg(self.ch, stream, item.offset, item.data)
                elif isinstance(item, SendGap):
                    yield GapMsg(self.ch, stream, item.start, item.end)
                else:
                    yield EofMsg(self.ch, stream, item.offset)

    def receive(
        self, msg: DataMsg | EofMsg | GapMsg, *, auto_ack: bool
    ) -> tuple[Data | Eof | Gap | None, bool]:
        """A stream record from the peer: the event it raises, and whether an ACK is due."""
        s = self.instream(msg.stream)
        event: Data | Eof | Gap | None = None
        if isinstance(msg, DataMsg):
            if fresh := s.on_data(msg.offset, msg.data):
                event = Data(self.ch, msg.stream, fresh)
        elif isinstance(msg, EofMsg):
            if s.on_eof(msg.offset):
                event = Eof(self.ch, msg.stream)
        elif s.on_gap(msg.start, msg.end):
            event = Gap(self.ch, msg.stream, msg.start, msg.end)
        if auto_ack:
            s.consume_all()
        return event, s.ack_due

    def release(self) -> list[Stream]:
        """Count every byte the peer sent as consumed; the streams whose ACK moved."""
        return [k for k, s in self.inp.items() if s.consume_all()]

    def reack(self) -> list[Stream]:
        """The streams that acknowledged anything: their ACK goes again on a new connection."""
        due = [k for k, s in self.inp.items() if s.ack_mark != (0, False)]
        for k in due:
            self.inp[k].ack_due = True
        return due

    def owed_acks(self) -> list[Ack]:
        """ACKs still due when the channel is forgotten."""
        return [Ack(self.ch, k, *s.ack_mark) for k, s in self.inp.items() if s.ack_due]

    def settle(self, events: list[Event]) -> bool:
        """Take a waiting EXIT or CLOSE once every stream the peer writes has ended.

        True if the peer's CLOSE came first and ours must answer it.
        """
        if self.opened and not self.inputs_ended:
            return False
        if self.exit_pending is not None:
            events.append(Exited(self.ch, self.exit_pending))
            self.exit_pending = None
        if not self.close_pending:
            return False
        self.close_pending = False
        before = self.state
        self.step(Input.RECV_CLOSE)
        events.append(ChannelClosed(self.ch))
        if before is ChannelState.CLOSING:
            return False
        self.end_output()
        return True

    def _expect(self, role: Role, event: Input) -> None:
        if self.role is not role or not self.allows(event):
            raise MessageError(ErrorCode.CHANNEL_STATE, f"{event.value} on channel {self.ch}")

    def on_control(
        self, msg: Opened | OpenFailed | Resize | Signal | Exit | Close, events: list[Event]
    ) -> bool:
        """A control message from the peer for this channel; True as ``settle``."""
        if isinstance(msg, Opened):
            self._expect(Role.APPLIANCE, Input.RECV_OPENED)
            self.opened = True
            if self.step(Input.RECV_OPENED) is ChannelState.OPEN:
                events.append(ChannelOpened(self.ch))
        elif isinstance(msg, OpenFailed):
            self._expect(Role.APPLIANCE, Input.RECV_OPEN_FAILED)
            self.step(Input.RECV_OPEN_FAILED)
            events.append(OpenRefused(self.ch, msg.reason))
        elif isinstance(msg, Resize | Signal):
            self._expect(Role.TETHER, Input.RECV_CONTROL)
            if isinstance(msg, Resize):
                events.append(Resized(self.ch, msg.rows, msg.cols))
            else:
                events.append(Signalled(self.ch, msg.signo))
        elif isinstance(msg, Exit):
            self._expect(Role.APPLIANCE, Input.RECV_CONTROL)
            if not self.opened:
                raise MessageError(ErrorCode.CHANNEL_STATE, f"exit before open on {self.ch}")
            self.exit_pending = msg.status
        else:
            self._expect(self.role, Input.RECV_CLOSE)
            self.close_pending = True
        return self.settle(events)
