"""One peer link, sans-IO: the ``Mux`` and the routing of its events (wsproto/h2-style facade).

``LinkConnection`` owns the link's ``Mux`` (frames, stream table, flow-control
windows drawn from one ``Budget``, keepalive, drain) and the table of stream
handlers. Bytes in through ``receive_data`` (or ``receive_buffer`` +
``received_in_place``): the per-stream events go straight to their stream's
handler, in order, synchronously (DATA, CREDIT and ACK inline, no event object
beyond the mux's own); a new stream goes to ``on_open`` (or is refused when this
end accepts none); what is left for the adapter comes back as actions
(``GoAwayReceived``, ``PongReceived``, ``LinkFailed`` with its ``ErrorCode``).
Bytes out through the ``send_*`` methods and ``data_to_send``; ``fill_turns``
gives streams with something to send their round-robin writer turns.

``judge_open`` decides what an OPEN means for an acceptor's session table
(``common.proto.link.sessions.SessionDirectory.judge``), answers the verdicts
that need no session (ENDED, REFUSE) on the wire and returns the decision for
the adapter to carry out (store a new session, re-attach a known one).

Nothing here does I/O or reads a clock; the trio adapter is
``common.link.peerlink.PeerLink``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from common.proto.link.frames import ErrorCode, LinkProtocolError
from common.proto.link.mux import (
    AckReceived,
    CreditAvailable,
    DataReceived,
    EofReceived,
    Event,
    GoAwayReceived,
    Mux,
    MuxConfig,
    PongReceived,
    StreamOpened,
    StreamReset,
)
from common.proto.link.sessions import Decision, Owned, SessionDirectory, Verdict

__all__ = [
    "Action",
    "LinkConnection",
    "LinkFailed",
    "StreamHandler",
]


class StreamHandler(Protocol):
    """What a link calls for one of its streams (from the reader task; must not block)."""

    def on_data(self, offset: int, payload: bytes | bytearray) -> None: ...
    def on_ack(self, offset: int, fin: bool) -> None: ...
    def on_eof(self, offset: int) -> None: ...
    def on_reset(self, code: int, reason: str) -> None: ...
    def on_credit(self) -> None: ...
    def on_batch_end(self) -> None: ...
    def produce(self, max_bytes: int) -> bool:
        """Writer's turn: queue up to ``max_bytes`` of frames; True if more is ready."""
        ...


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """The link must be closed: the peer broke the protocol, or fell silent."""

    code: int
    reason: str


Action = GoAwayReceived | PongReceived | LinkFailed
OpenCallback = Callable[[StreamOpened], None]
S = TypeVar("S", bound=Owned)

_NO_ACTIONS: Sequence[Action] = ()


class LinkConnection:
    """One link's sans-IO state: call ``receive_data`` with what arrives, send what
    ``data_to_send`` returns; ``on_open`` takes new streams (None: accept none)."""

    def __init__(
        self,
        config: MuxConfig | None = None,
        *,
        client: bool,
        now: float,
        on_open: OpenCallback | None = None,
    ) -> None:
        self.mux = mux = Mux(config, client=client, now=now)
        self.config = mux.config
        self.on_open = on_open
        self.handlers: dict[int, StreamHandler] = {}
        self.touched: dict[int, StreamHandler] = {}  # received since the last batch end
        self.eof_seen = False  # an EOF arrived since the last batch end
        self.rtt: float | None = None
        self.pong_seq = 0  # the newest PING answered
        self._turns: deque[int] = deque()  # streams with something to send, round robin
        self._ready_set: set[int] = set()
        # pass-throughs: the mux's own bound methods (no extra call on the data path)
        self.data_to_send = mux.data_to_send
        self.receive_buffer = mux.receive_buffer
        self.send_credit = mux.send_credit
        self.send_data = mux.send_data
        self.send_ack = mux.send_ack
        self.send_eof = mux.send_eof
        self.ping = mux.ping

    # ------------------------------------------------------------ state
    @property
    def ready(self) -> bool:
        """The peer's HELLO arrived: DATA may be sent."""
        return self.mux.ready

    @property
    def draining(self) -> bool:
        """GOAWAY sent or received: no new streams."""
        return self.mux.goaway_sent is not None or self.mux.goaway_received is not None

    @property
    def pending_output(self) -> int:
        return self.mux.pending_output

    @property
    def has_turns(self) -> bool:
        return bool(self._turns)

    # ------------------------------------------------------------ input
    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> Sequence[Action]:
        """Feed received bytes; routes the stream events, returns the link's actions."""
        try:
            events = self.mux.receive_data(data, now)
        except LinkProtocolError as e:
            return [LinkFailed(e.code, str(e))]
        return self._route(events)

    def received_in_place(self, n: int, now: float) -> Sequence[Action]:
        """``n`` bytes were received into ``receive_buffer()``; like ``receive_data``."""
        try:
            events = self.mux.received_in_place(n, now)
        except LinkProtocolError as e:
            return [LinkFailed(e.code, str(e))]
        return self._route(events)

    def pass_target(self) -> tuple[StreamHandler | None, int, int, bool] | None:
        """(handler, offset, bytes left, must) of a large DATA payload whose bytes the
        caller may move itself, then report with ``passed`` (``must``: it is being
        passed, its rest must be too); None: receive as usual."""
        target = self.mux.pass_target()
        if target is None:
            return None
        sid, off, left = target
        return self.handlers.get(sid), off, left, self.mux.passing

    def passed(self, n: int, now: float) -> StreamHandler | None:
        """``n`` bytes of the ``pass_target`` payload were moved: counted as received;
        returns the stream's handler, which takes them (None: nobody's, dropped)."""
        sid, _off = self.mux.passed(n, now)
        h = self.handlers.get(sid)
        if h is None:
            self.mux.consumed(sid, n)
        else:
            self.touched[sid] = h
        return h

    def _route(self, events: list[Event]) -> Sequence[Action]:
        handlers = self.handlers
        actions = _NO_ACTIONS
        for ev in events:
            if isinstance(ev, DataReceived):  # the data path: inline
                h = handlers.get(ev.stream_id)
                if h is None:
                    self.mux.consumed(ev.stream_id, len(ev.payload))
                    continue
                h.on_data(ev.offset, ev.payload)
                self.touched[ev.stream_id] = h
            elif isinstance(ev, CreditAvailable):
                h = handlers.get(ev.stream_id)
                if h is not None:
                    h.on_credit()
            elif isinstance(ev, AckReceived):
                h = handlers.get(ev.stream_id)
                if h is not None:
                    h.on_ack(ev.offset, ev.fin)
            else:
                action = self._route_control(ev)
                if action is not None:
                    actions = [*actions, action]
        return actions

    def _route_control(self, ev: Event) -> Action | None:
        if isinstance(ev, EofReceived):
            h = self.handlers.get(ev.stream_id)
            if h is not None:
                h.on_eof(ev.offset)
                self.touched[ev.stream_id] = h
                self.eof_seen = True
        elif isinstance(ev, StreamReset):
            h = self.handlers.pop(ev.stream_id, None)
            self.touched.pop(ev.stream_id, None)
            if h is not None:
                h.on_reset(ev.code, ev.reason)
        elif isinstance(ev, StreamOpened):
            if self.on_open is None:
                self.mux.reset_stream(
                    ev.stream_id, ErrorCode.REFUSED, "this end accepts no streams"
                )
            else:
                self.on_open(ev)
        elif isinstance(ev, PongReceived):
            self.rtt = ev.rtt
            self.pong_seq = max(self.pong_seq, ev.seq)
            return ev
        elif isinstance(ev, GoAwayReceived):
            return ev
        return None

    def batch_end(self) -> None:
        """The per-batch work (ACKs) of the streams that received since the last one."""
        self.eof_seen = False
        touched, self.touched = self.touched, {}
        for h in touched.values():
            h.on_batch_end()

    # ------------------------------------------------------------ streams
    def open(
        self,
        handler: StreamHandler,
        session_id: bytes,
        recv_offset: int,
        header: bytes,
        resume: bool,
        continues: int | None = None,
    ) -> int:
        """Open a stream handled by ``handler``; raises LinkClosingError."""
        sid = self.mux.open_stream(session_id, recv_offset, header, resume, continues)
        self.handlers[sid] = handler
        return sid

    def attach(self, sid: int, handler: StreamHandler) -> None:
        """Take over an incoming stream (from ``on_open``).

        Registered even if the mux already dropped the stream: a RESET that arrived
        in the same read as the OPEN is routed right after, to this handler.
        """
        self.handlers[sid] = handler

    def detach(self, sid: int, code: int, reason: str, *, send: bool = True) -> None:
        """Stop handling ``sid``; RESET it (CLOSE when code is NO_ERROR) if ``send``."""
        self.handlers.pop(sid, None)
        self._ready_set.discard(sid)
        self.touched.pop(sid, None)
        if send:
            self.mux.reset_stream(sid, code, reason)

    def take_handlers(self) -> dict[int, StreamHandler]:
        """The link is gone: every handler, forgotten (to be told so)."""
        handlers, self.handlers = self.handlers, {}
        return handlers

    def want_send(self, sid: int) -> bool:
        """``sid`` has data (or EOF) to send; True if it just got a writer turn."""
        if sid not in self._ready_set and sid in self.handlers:
            self._ready_set.add(sid)
            self._turns.append(sid)
            return True
        return False

    def fill_turns(self, high_water: int, quantum: int) -> None:
        """Give ready streams their turns (deficit-free round robin) up to ``high_water``."""
        ready = self._turns
        for _ in range(len(ready)):
            if self.mux.pending_output >= high_water:
                return
            sid = ready.popleft()
            h = self.handlers.get(sid)
            if h is not None and h.produce(quantum):
                ready.append(sid)
            else:
                self._ready_set.discard(sid)

    def consumed(self, sid: int, n: int) -> bool:
        """The application took ``n`` bytes of ``sid``; True if credit was queued."""
        before = self.mux.pending_output
        self.mux.consumed(sid, n)
        return self.mux.pending_output != before

    # ------------------------------------------------------------ sessions
    def judge_open(
        self, ev: StreamOpened, sessions: SessionDirectory[S], peer_identity: str
    ) -> Decision[S]:
        """What the OPEN ``ev`` from ``peer_identity`` means for ``sessions``.

        ENDED and REFUSE are answered here (ACK + CLOSE of a complete session, else
        RESET with the verdict's code); NEW and ATTACH are the adapter's to carry out.
        """
        d = sessions.judge(ev.session_id, ev.resume, peer_identity)
        sid = ev.stream_id
        if d.verdict is Verdict.ENDED:
            assert d.tomb is not None
            if d.tomb.code == ErrorCode.NO_ERROR:
                self.send_ack(sid, d.tomb.recv_offset, d.tomb.eof_received)
                self.detach(sid, ErrorCode.NO_ERROR, "session already complete")
            else:
                self.detach(sid, d.tomb.code, d.tomb.reason)
        elif d.verdict is Verdict.REFUSE:
            self.detach(sid, d.code, d.reason)
        return d

    # ------------------------------------------------------------ link
    def goaway(self, reason: str) -> None:
        """Drain: no new streams from the peer beyond those it opened so far."""
        self.mux.goaway(ErrorCode.NO_ERROR, reason)

    def tick(self, now: float) -> LinkFailed | None:
        """Keepalive; a ``LinkFailed`` (TIMEOUT) once the peer is considered dead."""
        if self.mux.tick(now):
            return None
        return LinkFailed(ErrorCode.TIMEOUT, f"peer is silent: {self.mux.dead_reason}")
