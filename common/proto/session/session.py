"""One VM's session: channels carried exactly once over a succession of connections.

A ``Session`` outlives connections. The sealed transport under it hands over whole
plaintext records in order and takes records to send; the adapter calls
``connection_up(now)`` when a new connection is sealed, ``receive_record`` for each
record, ``records_to_send`` to drain, ``connection_down`` when the record stream ended.

Session states::

    DISCONNECTED --connection_up--> AWAITING_RESUME --peer RESUME--> LIVE
         ^                               | bad record                 | bad record
         +--------connection_down------- BROKEN <---------------------+
         +--------connection_down------- UNKNOWN <-- RESUME of a session never held

On ``connection_up`` both ends send RESUME first: version and capabilities, the session
id, how many control messages it has taken, and per channel-stream the offset (and EOF)
it has received. Each end then resends exactly from the peer's marks (control messages
first, then stream bytes): nothing is lost or doubled. Nothing but RESUME goes out
before the peer's RESUME arrives. The appliance names the session; the tether adopts
the id from a RESUME saying nothing of the tether's reached the appliance; a peer that
lost the session is ``SESSION_MISMATCH`` (rules in ``peercheck``).

A bad record yields ``ProtocolError``: the adapter drops the connection (the session
ignores that connection from then on) and the session resumes on the next one.

Acknowledgements and the receive window (see ``replay``): ACKs are cumulative and
coalesced, and each stream's goes again after RESUME (the last may have been lost). With
``SessionConfig.ack_on_consume`` ACK says what the application *consumed*
(``consumed(ch, stream, n)``), so the peer's replay bound caps what this end holds per
stream and a stream nobody reads stalls only itself, never the connection. RESUME says
what *arrived*: those bytes are held here across the cut, so the peer resends from there
and frees its copy (from the consumed offset it would resend bytes held here, only to
have them trimmed, and a DROP sender could name held bytes lost). ACK = consumed, RESUME
= received. A channel closed both ways is acknowledged in full. Auto-ack (the default):
bytes count as consumed on arrival; the tether's endpoint turns ``ack_on_consume`` on.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from itertools import islice

from common.proto.session import channels as chs
from common.proto.session.channels import Channel, ChannelState, ChannelStateError, Input, Role
from common.proto.session.messages import (
    CAP_ATTACH_SIZE,
    MIN_VERSION,
    SESSION_ID_LEN,
    VERSION,
    Ack,
    Close,
    Control,
    DataMsg,
    EofMsg,
    ErrorCode,
    ExecSpec,
    Exit,
    ExitStatus,
    GapMsg,
    Message,
    MessageError,
    OpenAttach,
    Opened,
    OpenExec,
    OpenFailed,
    Resize,
    Resume,
    Signal,
    Stream,
    StreamMark,
    decode,
    encode,
)
from common.proto.session.peercheck import NO_SESSION, identify
from common.proto.session.replay import InStream, OutStream, Policy
from common.proto.session.sessionconfig import SessionConfig as SessionConfig


class SessionState(enum.Enum):
    DISCONNECTED = "disconnected"
    AWAITING_RESUME = "awaiting-resume"
    LIVE = "live"
    BROKEN = "broken"
    UNKNOWN = "unknown-session"  # the peer's RESUME named a session this end never had


class Session:
    """The sans-IO core of one VM's session, for the appliance or the tether end."""

    def __init__(
        self, role: Role, session_id: bytes | None = None, config: SessionConfig | None = None
    ) -> None:
        if role is Role.APPLIANCE and (session_id is None or len(session_id) != SESSION_ID_LEN):
            raise ValueError("the appliance names the session: 16 bytes")
        self.role = role
        self.session_id = session_id
        self.config = config or SessionConfig()
        self.state = SessionState.DISCONNECTED
        self.peer_version = 0
        self.peer_caps = 0
        self.now = 0.0
        self._channels: dict[int, Channel] = {}
        self._high = 0  # highest channel id ever opened
        self._ctl: deque[Control] = deque()  # control messages not yet acknowledged
        self._ctl_base = 0  # seq of _ctl[0]
        self._ctl_cursor = 0  # next seq to transmit on this connection
        self._ctl_received = 0
        self._ctl_ack_due = False
        self._acks_due: dict[tuple[int, Stream], None] = {}
        self._final_acks: list[Ack] = []  # for channels already forgotten
        self._outbox: list[bytes] = []
        self._sizes: dict[int, tuple[int, int]] = {}  # OPEN_ATTACH sizes before peer caps

    # ------------------------------------------------------------ connections
    def connection_up(self, now: float) -> None:
        self.now = now
        self.state = SessionState.AWAITING_RESUME
        self._acks_due.clear()
        self._final_acks.clear()
        self._ctl_ack_due = False
        for c in self._channels.values():  # the last ACKs may have been lost in the cut
            self._acks_due.update(dict.fromkeys((c.ch, k) for k in c.reack()))
        marks = tuple(
            StreamMark(c.ch, stream, s.offset, s.eof)
            for c in self._channels.values()
            for stream, s in c.inp.items()
        )
        resume = Resume(
            VERSION, self.config.caps, self.session_id or NO_SESSION, self._ctl_received, marks
        )
        self._outbox = [encode(resume)]

    def connection_down(self) -> None:
        self.state = SessionState.DISCONNECTED
        self._outbox = []

    # ------------------------------------------------------------ records
    def receive_record(self, payload: bytes, now: float) -> list[chs.Event]:
        self.now = now
        events: list[chs.Event] = []
        if self.state in (SessionState.DISCONNECTED, SessionState.BROKEN, SessionState.UNKNOWN):
            return events
        try:
            msg = decode(payload)
            if msg is not None:
                self._dispatch(msg, events)
        except MessageError as e:
            self.state = SessionState.BROKEN
            self._outbox = []
            events.append(chs.ProtocolError(e.code, e.detail))
        return events

    def records_to_send(self, max_records: int | None = None) -> list[bytes]:
        """Records due on this connection, in order (at most ``max_records``)."""
        return list(islice(self._produce(), max_records))

    def _produce(self) -> Iterator[bytes]:
        while self._outbox:
            yield self._outbox.pop(0)
        if self.state is not SessionState.LIVE:
            return
        yield from self._produce_acks()
        while self._ctl_cursor < self._ctl_base + len(self._ctl):
            msg = self._ctl[self._ctl_cursor - self._ctl_base]
            self._ctl_cursor += 1
            yield encode(msg, caps=self.peer_caps)
        for c in list(self._channels.values()):
            if c.opened:
                yield from map(encode, c.outgoing(self.config.max_data))

    def _produce_acks(self) -> Iterator[bytes]:
        if self._ctl_ack_due:
            self._ctl_ack_due = False
            yield encode(Ack(0, Stream.CONTROL, self._ctl_received, False))
        while self._final_acks:
            yield encode(self._final_acks.pop(0))
        while self._acks_due:
            ch, stream = next(iter(self._acks_due))
            del self._acks_due[(ch, stream)]
            c = self._channels.get(ch)
            if c is not None:
                s = c.inp[stream]
                s.ack_due = False
                s.sent = s.ack_mark
                yield encode(Ack(ch, stream, *s.sent))

    # ------------------------------------------------------------ dispatch
    def _dispatch(self, msg: Message, events: list[chs.Event]) -> None:
        if isinstance(msg, Resume) != (self.state is SessionState.AWAITING_RESUME):
            raise MessageError(ErrorCode.UNEXPECTED, f"{type(msg).__name__} in {self.state.value}")
        match msg:
            case Resume():
                self._on_resume(msg, events)
            case Ack():
                self._on_ack(msg, events)
            case DataMsg() | EofMsg() | GapMsg():
                self._on_stream(msg, events)
            case _:
                self._on_control(msg, events)

    def _known(self, ch: int) -> Channel | None:
        """The live channel ``ch``, None if it was forgotten; an error if it never was."""
        c = self._channels.get(ch)
        if c is None and not 0 < ch <= self._high:
            raise MessageError(ErrorCode.UNKNOWN_CHANNEL, f"channel {ch}")
        return c

    def _check_peer(self, msg: Resume) -> bool:
        """False if the peer holds a session this end does not (it is left UNKNOWN)."""
        if msg.version < MIN_VERSION:
            raise MessageError(ErrorCode.VERSION, f"peer speaks version {msg.version}")
        marks = (s.offset + s.eof for c in self._channels.values() for s in c.inp.values())
        taken = (self._ctl_base, self._ctl_received, *marks)
        if (sid := identify(self.session_id, msg, taken)) is None:
            return False
        self.session_id = sid
        if not self._ctl_base <= msg.ctl_received <= self._ctl_base + len(self._ctl):
            raise MessageError(ErrorCode.OFFSET, f"control resume at {msg.ctl_received}")
        return True

    def _on_resume(self, msg: Resume, events: list[chs.Event]) -> None:
        if not self._check_peer(msg):
            # A session we never had (we restarted): our own RESUME, naming no session,
            # still goes out, and the peer answers it with SESSION_MISMATCH on its side.
            self.state = SessionState.UNKNOWN
            return
        self._ack_control(msg.ctl_received)
        self._ctl_cursor = msg.ctl_received
        marks = {(m.ch, m.stream): m for m in msg.marks}
        for c in list(self._channels.values()):
            if not c.opened:
                continue
            for stream, s in c.out.items():
                # A peer lists every channel it holds; one it forgot had all our bytes.
                m = marks.get((c.ch, stream)) or StreamMark(c.ch, stream, s.end, True)
                if s.rewind(m.offset, m.eof):
                    events.append(chs.Writable(c.ch, stream))
            self._maybe_forget(c)
        self.peer_version = min(VERSION, msg.version)
        self.peer_caps = msg.caps & self.config.caps
        self.state = SessionState.LIVE
        events.append(chs.Resumed(self.peer_version, self.peer_caps))
        self._sizes_as_resize()

    def _ack_control(self, count: int) -> None:
        if count > self._ctl_base + len(self._ctl):
            raise MessageError(ErrorCode.OFFSET, f"control ack {count}")
        while self._ctl_base < count:
            self._ctl.popleft()
            self._ctl_base += 1

    def _on_ack(self, msg: Ack, events: list[chs.Event]) -> None:
        if msg.stream is Stream.CONTROL:
            if msg.ch != 0 or msg.eof or msg.offset > self._ctl_cursor:
                raise MessageError(ErrorCode.OFFSET, f"control ack {msg.offset}")
            self._ack_control(msg.offset)
            return
        c = self._known(msg.ch)
        if c is None:
            return
        s = c.out.get(msg.stream)
        if s is None or not c.opened:
            raise MessageError(ErrorCode.CHANNEL_STATE, f"ack on {msg.ch}/{msg.stream.name}")
        if s.ack(msg.offset, msg.eof):
            events.append(chs.Writable(c.ch, msg.stream))
        self._maybe_forget(c)

    def _on_stream(self, msg: DataMsg | EofMsg | GapMsg, events: list[chs.Event]) -> None:
        c = self._known(msg.ch)
        if c is None:
            if isinstance(msg, EofMsg):  # we took it all before; the ACK that said so was lost
                self._final_acks.append(Ack(msg.ch, msg.stream, msg.offset, True))
            return
        event, ack_due = c.receive(msg, auto_ack=not self.config.ack_on_consume)
        if ack_due:
            self._acks_due[(c.ch, msg.stream)] = None
        if event is not None:
            events.append(event)
            if isinstance(event, chs.Eof):
                self._settle(c, events)

    # ------------------------------------------------------------ control in
    def _on_control(self, msg: Control, events: list[chs.Event]) -> None:
        if msg.seq < self._ctl_received:
            self._ctl_ack_due = True
            return
        if msg.seq > self._ctl_received:
            raise MessageError(
                ErrorCode.SEQUENCE, f"control {msg.seq}, expected {self._ctl_received}"
            )
        if isinstance(msg, OpenExec | OpenAttach):
            self._on_open(msg, events)
        else:
            c = self._known(msg.ch)
            if c is not None and c.state is not ChannelState.CLOSED:
                if c.on_control(msg, events):  # the peer closed first: answer with our CLOSE
                    self._ctl.append(Close(self._ctl_seq(), c.ch))
                self._maybe_forget(c)
        self._ctl_received += 1
        self._ctl_ack_due = True

    def _on_open(self, msg: OpenExec | OpenAttach, events: list[chs.Event]) -> None:
        if self.role is not Role.TETHER or msg.ch <= self._high:
            raise MessageError(ErrorCode.CHANNEL_STATE, f"open of channel {msg.ch}")
        if len(self._channels) >= self.config.max_channels:
            raise MessageError(ErrorCode.TOO_MANY_CHANNELS, f"{len(self._channels)} open")
        tty = msg.spec.tty if isinstance(msg, OpenExec) else msg.tty
        self._add(msg.ch, tty, Input.RECV_OPEN)
        if isinstance(msg, OpenExec):
            events.append(chs.ExecRequested(msg.ch, msg.spec))
        else:
            events.append(chs.AttachRequested(msg.ch, msg.tty, msg.rows, msg.cols))

    def _settle(self, c: Channel, events: list[chs.Event]) -> None:
        if c.settle(events):
            self._ctl.append(Close(self._ctl_seq(), c.ch))
        self._maybe_forget(c)

    def _maybe_forget(self, c: Channel) -> None:
        if c.state is ChannelState.CLOSED:  # every EOF is in: nothing more to hold back
            self._release(c)
        if c.finished and self._channels.pop(c.ch, None) is not None:
            for stream in c.inp:
                self._acks_due.pop((c.ch, stream), None)
            self._final_acks.extend(c.owed_acks())

    # ------------------------------------------------------------ control out
    def _ctl_seq(self) -> int:
        return self._ctl_base + len(self._ctl)

    def _send_control(self, msg: Control) -> None:
        encode(msg)  # ValueError now, from the caller, if a field cannot go on the wire
        self._ctl.append(msg)

    def _add(self, ch: int, tty: bool, event: Input) -> Channel:
        state = chs.TRANSITIONS[(None, event)]
        c = Channel(ch, self.role, tty, state, self.config.replay_limit, self.config.policy)
        self._channels[ch] = c
        self._high = ch
        return c

    def _local(self, ch: int, role: Role | None = None) -> Channel | None:
        """Our channel ``ch`` for a local call; None if it is closed or forgotten."""
        if role is not None and role is not self.role:
            raise ChannelStateError(f"the {self.role.value} cannot do that")
        c = self._channels.get(ch)
        if c is None and not 0 < ch <= self._high:
            raise ChannelStateError(f"no channel {ch}")
        return None if c is None or c.state is ChannelState.CLOSED else c

    def _step(self, c: Channel, event: Input) -> None:
        if not c.allows(event):
            raise ChannelStateError(f"{event.value} in state {c.state.value} on {c.ch}")
        c.step(event)

    # ------------------------------------------------------------ appliance calls
    def _open(self, tty: bool, make: Callable[[int, int], Control]) -> int:
        if self.role is not Role.APPLIANCE:
            raise ChannelStateError("only the appliance opens channels")
        if len(self._channels) >= self.config.max_channels:
            raise ChannelStateError(f"{len(self._channels)} channels open")
        ch = self._high + 1
        msg = make(self._ctl_seq(), ch)
        encode(msg)  # ValueError now if it cannot go on the wire
        self._add(ch, tty, Input.SEND_OPEN)
        self._ctl.append(msg)
        return ch

    def open_exec(self, spec: ExecSpec) -> int:
        return self._open(spec.tty, lambda seq, ch: OpenExec(seq, ch, spec))

    def open_attach(self, tty: bool = False, rows: int = 0, cols: int = 0) -> int:
        """OPEN_ATTACH with the pty's size to start with (see ``_sizes_as_resize``)."""
        ch = self._open(tty, lambda seq, ch: OpenAttach(seq, ch, tty, rows, cols))
        if rows and cols:
            self._sizes[ch] = (rows, cols)
            self._sizes_as_resize()
        return ch

    def _sizes_as_resize(self) -> None:
        """Once the peer's caps are known: one without CAP_ATTACH_SIZE gets RESIZE."""
        if self.state is SessionState.LIVE:
            sizes, self._sizes = self._sizes, {}
            for ch, (rows, cols) in sizes.items() if not self.peer_caps & CAP_ATTACH_SIZE else ():
                self.resize(ch, rows, cols)

    def _order(self, ch: int, make: Callable[[int], Resize | Signal]) -> bool:
        if (c := self._local(ch, Role.APPLIANCE)) is None:
            return True
        if len(self._ctl) >= self.config.max_control:
            return False
        self._step(c, Input.SEND_CONTROL)
        self._send_control(make(self._ctl_seq()))
        return True

    def resize(self, ch: int, rows: int, cols: int) -> bool:
        """Queue RESIZE; False (not queued) while ``max_control`` messages await their ACK."""
        return self._order(ch, lambda seq: Resize(seq, ch, rows, cols))

    def signal(self, ch: int, signo: int) -> bool:
        """Queue SIGNAL; False (not queued) while ``max_control`` messages await their ACK."""
        return self._order(ch, lambda seq: Signal(seq, ch, signo))

    def close_stdin(self, ch: int) -> None:
        self.eof(ch, Stream.STDIN)

    # ------------------------------------------------------------ tether calls
    def accept(
        self, ch: int, *, replay_limit: int | None = None, policy: Policy | None = None
    ) -> bool:
        """Answer OPENED; False if the appliance closed the channel meanwhile.

        ``replay_limit`` and ``policy`` override the session's for this channel's output
        (e.g. DROP for a main process that must not stall while the appliance is away).
        """
        if (c := self._local(ch, Role.TETHER)) is None:
            return False
        self._step(c, Input.SEND_OPENED)
        c.set_replay(replay_limit or self.config.replay_limit, policy or self.config.policy)
        c.opened = True
        self._ctl.append(Opened(self._ctl_seq(), ch))
        return True

    def reject(self, ch: int, reason: str) -> None:
        if (c := self._local(ch, Role.TETHER)) is not None:
            msg = OpenFailed(self._ctl_seq(), ch, reason[:1024])
            encode(msg)  # before the state moves
            self._step(c, Input.SEND_OPEN_FAILED)
            self._ctl.append(msg)
            self._maybe_forget(c)

    def exit(self, ch: int, status: ExitStatus) -> None:
        """The process ended: EOF on every stream still open, then EXIT."""
        if (c := self._local(ch, Role.TETHER)) is not None:
            self._step(c, Input.SEND_CONTROL)
            self._send_control(Exit(self._ctl_seq(), ch, status))
            c.end_output()

    # ------------------------------------------------------------ both ends
    def _outstream(self, ch: int, stream: Stream) -> OutStream | None:
        c = self._local(ch)
        return None if c is None else c.outstream(stream)

    def send(self, ch: int, stream: Stream, data: bytes) -> int:
        """Queue bytes; how many were taken (fewer under BLOCK: wait for ``Writable``)."""
        s = self._outstream(ch, stream)
        return 0 if s is None else s.write(data)

    def room(self, ch: int, stream: Stream) -> int:
        s = self._outstream(ch, stream)
        return 0 if s is None else s.room()

    def eof(self, ch: int, stream: Stream) -> None:
        s = self._outstream(ch, stream)
        if s is not None:
            s.write_eof()

    def close(self, ch: int) -> None:
        """We are done: EOF on our streams, then CLOSE; ``ChannelClosed`` when the peer is."""
        if (c := self._local(ch)) is not None:
            self._step(c, Input.SEND_CLOSE)
            c.end_output()
            self._ctl.append(Close(self._ctl_seq(), ch))

    def consumed(self, ch: int, stream: Stream, n: int) -> None:
        """With ``ack_on_consume``: ``n`` more bytes of the peer's ``stream`` were used up
        (written on, or dropped); at most what is held counts. A no-op for auto-ack or a
        channel already forgotten."""
        if (s := self._inp(ch, stream)) is not None and s.consume(n):
            self._acks_due[(ch, stream)] = None

    def held(self, ch: int, stream: Stream) -> int:
        """Bytes of the peer's ``stream`` that arrived and are not consumed yet."""
        return 0 if (s := self._inp(ch, stream)) is None else s.held

    def _inp(self, ch: int, stream: Stream) -> InStream | None:
        c = self._channels.get(ch)
        return None if c is None else c.inp.get(stream)

    def _release(self, c: Channel) -> None:
        self._acks_due.update(dict.fromkeys((c.ch, k) for k in c.release()))

    def set_ack_on_consume(self, on: bool) -> None:
        """Switch the acknowledgement mode; turning it off consumes whatever is held."""
        self.config = replace(self.config, ack_on_consume=on)
        for c in [] if on else list(self._channels.values()):
            self._release(c)

    def channel_state(self, ch: int) -> ChannelState | None:
        """The channel's state; None once it is forgotten."""
        c = self._channels.get(ch)
        return None if c is None else c.state

    @property
    def channel_count(self) -> int:
        return len(self._channels)
