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
from dataclasses import dataclass

from common.proto.session.messages import ErrorCode, ExecSpec, ExitStatus, Stream
from common.proto.session.replay import InStream, OutStream, Policy


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
