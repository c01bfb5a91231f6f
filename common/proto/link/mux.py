"""Many streams over one peer link (sans-IO): stream table, credit, keepalive, drain.

``Mux`` follows the h11 pattern: bytes in through ``receive_data`` (which
returns events), bytes out through ``data_to_send``; nothing here does I/O or
reads a clock, time comes in as ``now``. A link drives it through
``common.proto.link.connection.LinkConnection``, which routes the events.

Flow control is per stream and granted by the receiver. Each stream's window
starts at ``initial_window`` and doubles, up to ``stream_window``, whenever the
sender has spent three quarters of it before a refill reached it while the
application keeps up, i.e. does not sit on most of the window (auto-tuning: a
bulk stream grows until it no longer waits for credit, a thousand small ones
stay small). Each stream may hold at most its window (granted but unused credit
plus received bytes the application has not consumed yet). On top of that the receiver caps the
sum over all streams at ``connection_window``: credit beyond a small
per-stream reserve (``min_window``) is granted only while the total stays under
the cap, and freed budget goes to the streams waiting for it in turn. So memory
at every hop is bounded by ``connection_window + streams * min_window`` and a
stream whose reader stalls holds at most its own window: it never blocks others.

Keepalive: a PING every ``ping_interval``; a link from which nothing at all
arrived for ``dead_after`` seconds is dead (``tick`` returns False).

Drain: ``goaway()`` tells the peer the last stream id we accepted; OPENs above it
are refused and the peer opens them elsewhere. Receiving GOAWAY refuses new local
opens; streams we opened above the peer's last id are reported reset (REFUSED).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.proto.link import frames as F
from common.proto.link.budget import Budget
from common.proto.link.decoder import FrameDecoder
from common.proto.link.frames import ErrorCode, LinkProtocolError
from common.proto.link.mux_events import (
    AckReceived,
    CreditAvailable,
    DataReceived,
    EofReceived,
    Event,
    GoAwayReceived,
    PongReceived,
    StreamOpened,
    StreamReset,
)

__all__ = [
    "AckReceived",
    "CreditAvailable",
    "DataReceived",
    "EofReceived",
    "Event",
    "GoAwayReceived",
    "LinkClosingError",
    "Mux",
    "MuxConfig",
    "PongReceived",
    "StreamOpened",
    "StreamReset",
]

Chunk = bytes | bytearray | memoryview


@dataclass(frozen=True)
class MuxConfig:
    max_payload: int = 256 * 1024  # largest DATA payload we send and accept
    stream_window: int = 4 * 1024 * 1024
    min_window: int = 64 * 1024
    initial_window: int = 128 * 1024
    connection_window: int = 64 * 1024 * 1024
    grant_granularity: int = 16 * 1024
    max_streams: int = 4096
    ping_interval: float = 5.0
    dead_after: float = 15.0

    def __post_init__(self) -> None:
        if not 1024 <= self.max_payload <= F.MAX_PAYLOAD_LIMIT:
            raise ValueError("max_payload must be 1 KiB .. 1 MiB")
        if not 0 < self.min_window <= self.stream_window <= F.MAX_WINDOW_INCREMENT:
            raise ValueError("need 0 < min_window <= stream_window <= 2**31-1")
        if not self.min_window <= self.initial_window <= self.stream_window:
            raise ValueError("need min_window <= initial_window <= stream_window")
        if self.connection_window < self.stream_window:
            raise ValueError("connection_window must be >= stream_window")
        if self.max_streams < 1:
            raise ValueError("max_streams must be >= 1")
        if not 0 < self.ping_interval < self.dead_after:
            raise ValueError("need 0 < ping_interval < dead_after")


class LinkClosingError(Exception):
    """No new streams on this link (GOAWAY sent or received)."""


@dataclass
class _Stream:
    target: int  # current window (auto-tuned)
    send_credit: int = 0
    exhausted: bool = False  # the peer used up all its credit since the last growth
    granted: int = 0  # credit given to the peer, not yet used
    buffered: int = 0  # received, not yet consumed by the application
    waiting: bool = False  # in the starved queue


@dataclass
class _Ping:
    seq: int = 0
    sent_at: dict[int, float] = field(default_factory=dict)


class Mux:
    def __init__(self, config: MuxConfig | None = None, *, client: bool, now: float) -> None:
        self.config = config or MuxConfig()
        self.client = client
        self._decoder = FrameDecoder(self.config.max_payload + 8)
        self._out: list[Chunk] = []
        self._out_bytes = 0
        self._streams: dict[int, _Stream] = {}
        self._next_local = 1 if client else 2
        self._last_peer = 0
        # the connection window: credit granted plus bytes held, over all streams;
        # streams that got less than they want wait in it for freed budget
        self._budget: Budget[int] = Budget(self.config.connection_window)
        self._hello_received = False
        self._peer_max_payload = 0
        self._last_recv = now
        self._last_ping = now
        self._ping = _Ping()
        self.goaway_sent: int | None = None
        self.goaway_received: int | None = None
        self.dead_reason: str | None = None
        self._queue(F.encode(F.Hello(F.VERSION, self.config.max_payload + 8)))

    # ------------------------------------------------------------ output
    def _queue(self, b: Chunk) -> None:
        self._out.append(b)
        self._out_bytes += len(b)

    @property
    def pending_output(self) -> int:
        return self._out_bytes

    def data_to_send(self) -> list[Chunk]:
        out, self._out, self._out_bytes = self._out, [], 0
        return out

    # ------------------------------------------------------------ bookkeeping
    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def budget_used(self) -> int:
        return self._budget.used

    @property
    def ready(self) -> bool:
        """The peer's HELLO arrived: DATA may be sent."""
        return self._hello_received

    def has_stream(self, sid: int) -> bool:
        return sid in self._streams

    def _is_local(self, sid: int) -> bool:
        return (sid % 2 == 1) == self.client

    def _drop(self, sid: int) -> None:
        st = self._streams.pop(sid, None)
        if st is not None:
            self._budget.used -= st.granted + st.buffered
            self._serve_starved()

    # ------------------------------------------------------------ credit granting
    def _grant(self, sid: int, st: _Stream) -> None:
        cfg = self.config
        have = st.granted + st.buffered
        # never more than a fair share of the connection window: with many busy
        # streams each gets the same window, so each gets the same throughput
        target = min(st.target, max(cfg.min_window, cfg.connection_window // len(self._streams)))
        if have * 2 >= target and have >= cfg.min_window:
            return
        want = target - have
        avail = self._budget.limit - self._budget.used
        reserve = cfg.min_window - have
        grant = min(want, avail)
        if grant < min(want, cfg.grant_granularity):
            grant = 0
        grant = max(grant, reserve, 0)
        if grant > 0:
            st.granted += grant
            self._budget.used += grant
            self._queue(F.encode(F.Window(sid, grant)))
        if grant < want and not st.waiting:
            st.waiting = True
            self._budget.wait(sid)

    def _serve_starved(self) -> None:
        cfg = self.config
        budget = self._budget
        for _ in range(len(budget.waiting)):
            if budget.limit - budget.used < cfg.grant_granularity:
                return
            sid = budget.waiting.popleft()
            st = self._streams.get(sid)
            if st is None:
                continue
            st.waiting = False
            self._grant(sid, st)

    def consumed(self, sid: int, n: int) -> None:
        """The application took ``n`` received bytes of ``sid``: credit may flow again."""
        st = self._streams.get(sid)
        if st is None or n <= 0:
            return
        n = min(n, st.buffered)
        st.buffered -= n
        self._budget.used -= n  # (no calls on the data path)
        if st.exhausted and st.buffered * 4 < st.target * 3:
            # the sender ran (nearly) out of credit and the application is not
            # sitting on the window: the window is the limit
            st.exhausted = False
            st.target = min(st.target * 2, self.config.stream_window)
        self._grant(sid, st)
        self._serve_starved()

    # ------------------------------------------------------------ local actions
    def open_stream(
        self,
        session_id: bytes,
        recv_offset: int,
        header: bytes,
        resume: bool = False,
        continues: int | None = None,
    ) -> int:
        if self.goaway_sent is not None or self.goaway_received is not None:
            raise LinkClosingError("link is draining")
        if len(self._streams) >= self.config.max_streams:
            raise LinkClosingError("too many streams on this link")
        sid = self._next_local
        if sid > F.MAX_STREAM_ID:
            raise LinkClosingError("stream ids exhausted")
        self._next_local += 2
        # a resumed stream was already moving: skip the slow start
        moving = resume or continues is not None
        st = _Stream(self.config.stream_window if moving else self.config.initial_window)
        self._streams[sid] = st
        self._queue(F.encode(F.Open(sid, session_id, recv_offset, header, resume, continues)))
        self._grant(sid, st)
        return sid

    def send_credit(self, sid: int) -> int:
        st = self._streams.get(sid)
        if st is None or not self._hello_received:
            return 0
        return min(st.send_credit, self._peer_max_payload)

    def send_data(self, sid: int, offset: int, payload: Chunk) -> int:
        """Queue one DATA frame with as much of ``payload`` as credit allows."""
        st = self._streams.get(sid)
        if st is None or not self._hello_received:
            return 0
        n = min(len(payload), st.send_credit, self._peer_max_payload)
        if n <= 0:
            return 0
        st.send_credit -= n
        self._queue(F.data_header(sid, offset, n))
        self._queue(payload if n == len(payload) else memoryview(payload)[:n])
        return n

    def send_ack(self, sid: int, offset: int, fin: bool = False) -> None:
        if sid in self._streams:
            self._queue(F.encode(F.Ack(sid, offset, fin)))

    def send_eof(self, sid: int, offset: int) -> None:
        if sid in self._streams:
            self._queue(F.encode(F.Eof(sid, offset)))

    def reset_stream(self, sid: int, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Send RESET and forget the stream (CLOSE is RESET with NO_ERROR)."""
        if sid in self._streams:
            self._queue(F.encode(F.Reset(sid, code, reason)))
            self._drop(sid)

    def goaway(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        if self.goaway_sent is None:
            self.goaway_sent = self._last_peer
        self._queue(F.encode(F.GoAway(self._last_peer, code, reason)))

    def ping(self, now: float) -> int:
        """Queue a PING now; returns its sequence number (see ``PongReceived.seq``).

        The peer handles frames in order, so the PONG for this PING proves it has
        processed every frame queued before it.
        """
        self._last_ping = now
        self._ping.seq += 1
        seq = self._ping.seq
        self._ping.sent_at[seq] = now
        if len(self._ping.sent_at) > 64:
            self._ping.sent_at.pop(min(self._ping.sent_at))
        self._queue(F.encode(F.Ping(seq.to_bytes(8, "big"))))
        return seq

    def tick(self, now: float) -> bool:
        """Keepalive; returns False once the peer is considered dead."""
        if now - self._last_recv >= self.config.dead_after:
            self.dead_reason = f"nothing received for {now - self._last_recv:.1f}s"
            return False
        if now - self._last_ping >= self.config.ping_interval:
            self.ping(now)
        return True

    # ------------------------------------------------------------ input
    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Feed received bytes; LinkProtocolError means the link must be closed."""
        frames = self._decoder.feed(data)
        if data:
            self._last_recv = now
        events: list[Event] = []
        for fr in frames:
            self._handle(fr, now, events)
        return events

    def receive_buffer(self) -> memoryview | None:
        """Where the next received bytes may go directly (the rest of a large DATA
        payload being assembled), or None: then pass them to ``receive_data``."""
        return self._decoder.receive_buffer()

    def received_in_place(self, n: int, now: float) -> list[Event]:
        """``n`` bytes were received into ``receive_buffer()``; like ``receive_data``."""
        frames = self._decoder.filled(n)
        if n:
            self._last_recv = now
        events: list[Event] = []
        for fr in frames:
            self._handle(fr, now, events)
        return events

    def pass_target(self) -> tuple[int, int, int] | None:
        """(stream id, offset, bytes left) of a large DATA payload whose bytes the caller
        may move itself (``passed``): within the stream's credit, else None (always
        the one being passed: the rest of it must be passed)."""
        target = self._decoder.pass_target()
        if target is None or self._decoder.passing:
            return target
        if not self._hello_received:
            return None
        st = self._streams.get(target[0])
        if st is None or target[2] > st.granted:
            return None  # (received normally: a closed stream's, or a credit violation)
        return target

    @property
    def passing(self) -> bool:
        return self._decoder.passing

    def passed(self, n: int, now: float) -> tuple[int, int]:
        """``n`` bytes of the ``pass_target`` payload went elsewhere: count them as
        received (flow control) and return their (stream id, offset)."""
        sid, off = self._decoder.pass_bytes(n)
        self._last_recv = now
        st = self._streams.get(sid)
        if st is not None:  # (checked by pass_target; a stream dropped since: ignored)
            self._count(st, n)
        return sid, off

    def _count(self, st: _Stream, n: int) -> None:
        st.granted -= n
        st.buffered += n
        if st.granted * 4 <= st.target and st.target < self.config.stream_window:
            # The sender spent three quarters of the window before our
            # refill (sent at half) could reach it: the window, not the
            # application, limits this stream (auto-tuning, see consumed()).
            st.exhausted = True

    def _handle(self, fr: F.Frame, now: float, events: list[Event]) -> None:
        if not self._hello_received:
            self._on_hello(fr, events)
            return
        if isinstance(fr, F.Data):  # the data path: handled inline
            st = self._stream_for(fr.stream_id)
            if st is None:
                return
            n = len(fr.payload)
            if n > st.granted:
                raise LinkProtocolError(
                    f"stream {fr.stream_id}: {n} bytes sent with only {st.granted} of credit",
                    ErrorCode.FLOW_CONTROL,
                )
            self._count(st, n)
            events.append(DataReceived(fr.stream_id, fr.offset, fr.payload))
            return
        _CONTROL[type(fr)](self, fr, now, events)

    def _on_hello(self, fr: F.Frame, events: list[Event]) -> None:
        if not isinstance(fr, F.Hello):
            raise LinkProtocolError(f"expected HELLO first, got {type(fr).__name__}")
        if fr.version != F.VERSION:
            raise LinkProtocolError(f"unsupported link version {fr.version}")
        if fr.max_payload < 1024 + 8:
            raise LinkProtocolError("peer max_payload too small")
        self._hello_received = True
        self._peer_max_payload = min(fr.max_payload - 8, self.config.max_payload)
        events.extend(CreditAvailable(sid) for sid, s in self._streams.items() if s.send_credit)

    def _on_window(self, fr: F.Window, now: float, events: list[Event]) -> None:
        ws = self._stream_for(fr.stream_id)
        if ws is None:
            return
        if ws.send_credit + fr.increment > F.MAX_WINDOW_INCREMENT:
            raise LinkProtocolError(
                f"stream {fr.stream_id}: credit overflow", ErrorCode.FLOW_CONTROL
            )
        ws.send_credit += fr.increment
        events.append(CreditAvailable(fr.stream_id))

    def _on_ack(self, fr: F.Ack, now: float, events: list[Event]) -> None:
        if self._stream_for(fr.stream_id) is not None:
            events.append(AckReceived(fr.stream_id, fr.offset, fr.fin))

    def _on_eof(self, fr: F.Eof, now: float, events: list[Event]) -> None:
        if self._stream_for(fr.stream_id) is not None:
            events.append(EofReceived(fr.stream_id, fr.offset))

    def _on_reset(self, fr: F.Reset, now: float, events: list[Event]) -> None:
        if self._stream_for(fr.stream_id) is not None:
            self._drop(fr.stream_id)
            events.append(StreamReset(fr.stream_id, fr.code, fr.reason))

    def _on_ping(self, fr: F.Ping, now: float, events: list[Event]) -> None:
        self._queue(F.encode(F.Pong(fr.opaque)))

    def _on_pong(self, fr: F.Pong, now: float, events: list[Event]) -> None:
        seq = int.from_bytes(fr.opaque, "big")
        sent = self._ping.sent_at.pop(seq, None)
        if sent is not None:
            events.append(PongReceived(now - sent, seq))

    def _on_second_hello(self, fr: F.Hello, now: float, events: list[Event]) -> None:
        raise LinkProtocolError("unexpected HELLO")

    def _stream_for(self, sid: int) -> _Stream | None:
        st = self._streams.get(sid)
        if st is not None:
            return st
        # closed streams: ignore; never-opened ones: the peer is confused
        opened = (sid < self._next_local) if self._is_local(sid) else (sid <= self._last_peer)
        if not opened:
            raise LinkProtocolError(f"frame for stream {sid}, which was never opened")
        return None

    def _on_open(self, fr: F.Open, now: float, events: list[Event]) -> None:
        sid = fr.stream_id
        if self._is_local(sid):
            raise LinkProtocolError(f"peer opened stream {sid} with our parity")
        if sid <= self._last_peer:
            raise LinkProtocolError(f"peer reused stream id {sid}")
        self._last_peer = sid
        if self.goaway_sent is not None and sid > self.goaway_sent:
            self._queue(F.encode(F.Reset(sid, ErrorCode.REFUSED, "link is draining")))
            return
        if len(self._streams) >= self.config.max_streams:
            self._queue(F.encode(F.Reset(sid, ErrorCode.REFUSED, "too many streams")))
            return
        moving = fr.resume or fr.continues is not None
        st = _Stream(self.config.stream_window if moving else self.config.initial_window)
        self._streams[sid] = st
        self._grant(sid, st)
        events.append(
            StreamOpened(sid, fr.session_id, fr.recv_offset, fr.header, fr.resume, fr.continues)
        )

    def _on_goaway(self, fr: F.GoAway, now: float, events: list[Event]) -> None:
        first = self.goaway_received is None
        self.goaway_received = fr.last_stream_id
        events.append(GoAwayReceived(fr.last_stream_id, fr.code, fr.reason))
        if first:
            for sid in [s for s in self._streams if self._is_local(s) and s > fr.last_stream_id]:
                self._drop(sid)
                events.append(StreamReset(sid, ErrorCode.REFUSED, "peer is draining"))


# control frames (after the HELLO), by type; DATA is handled inline in Mux._handle
_CONTROL: dict[type, Callable[[Mux, Any, float, list[Event]], None]] = {
    F.Open: Mux._on_open,
    F.Window: Mux._on_window,
    F.Ack: Mux._on_ack,
    F.Eof: Mux._on_eof,
    F.Reset: Mux._on_reset,
    F.Ping: Mux._on_ping,
    F.Pong: Mux._on_pong,
    F.GoAway: Mux._on_goaway,
    F.Hello: Mux._on_second_hello,
}
