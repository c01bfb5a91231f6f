"""A resumable stream's side facing the peer links (trio adapter).

``StreamPath`` is the base of ``common.link.resumable.ResumableStream``: its
attachments to streams on peer links (``Attachment``), what arrives on them
(the reader task's handlers), the writer turns that send on them, and the path
changes: attach, move, fail, finish. Which of these are allowed, and what a
RESET means, is decided by ``common.proto.link.resume_state.StreamMachine``.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any, Protocol

import trio

from common.link.peerlink import LinkConfig, LinkDeadError, PeerLink
from common.link.replay import ReplayPool
from common.ops.wiretext import wire
from common.proto.link.frames import ErrorCode
from common.proto.link.mux import LinkClosingError
from common.proto.link.resume import GapError, ResumeError, ResumeSession
from common.proto.link.resume_state import PathInput, StreamMachine

log = logging.getLogger("relay.resumable")


class StreamFailedError(trio.BrokenResourceError):
    """The session ended abnormally; ``code`` is an ``ErrorCode`` (GAP, TIMEOUT, ...)."""

    def __init__(self, code: int, reason: str) -> None:
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = str(code)
        super().__init__(f"stream failed ({name}): {reason}")
        self.code = code
        self.reason = reason


class Connector(Protocol):
    async def get_link(self) -> PeerLink: ...
    def link_failed(self, link: PeerLink) -> None: ...


class Attachment:
    """One stream on one link, as a handler; stale once ``current`` is False."""

    __slots__ = ("current", "link", "sid", "stream")

    def __init__(self, stream: StreamPath, link: PeerLink) -> None:
        self.stream = stream
        self.link = link
        self.sid = 0
        self.current = True

    def on_data(self, offset: int, payload: bytes | bytearray) -> None:
        if self.current:
            self.stream._on_data(self, offset, payload)
        else:
            self.link.consumed(self.sid, len(payload))

    def on_ack(self, offset: int, fin: bool) -> None:
        if self.current:
            self.stream._on_ack(self, offset, fin)

    def on_eof(self, offset: int) -> None:
        if self.current:
            self.stream._on_eof(offset)

    def on_reset(self, code: int, reason: str) -> None:
        if self.current:
            self.stream._on_reset(self, code, reason)

    def on_credit(self) -> None:
        if self.current:
            self.stream._kick_send()

    def on_batch_end(self) -> None:
        if self.current:
            self.stream._flush_ack(self)

    def produce(self, max_bytes: int) -> bool:
        if self.current:
            return self.stream._produce(self, max_bytes)
        return False


class StreamPath:
    """A resumable stream's path to its far end; ``ResumableStream`` adds the application side."""

    def __init__(
        self,
        session_id: bytes,
        header: bytes,
        config: LinkConfig | None = None,
        *,
        opener: bool,
        connector: Connector | None = None,
        pool: ReplayPool | None = None,
        continues: tuple[int, int] | None = None,
    ) -> None:
        self.config = config or LinkConfig()
        self.session_id = session_id
        self.header = header
        self.opener = opener
        self._connector = connector
        # acceptor of a CONTINUE OPEN: (first offset it receives, first offset it sends)
        self.continues = continues
        start, rstart = continues if continues is not None else (0, 0)
        self.session = ResumeSession(
            self.config.replay_limit,
            overflow=self.config.overflow,  # type: ignore[arg-type]
            send_start=rstart,
            recv_start=start,
        )
        self.machine = StreamMachine(opener=opener)
        self._handing = 0  # bytes the last receive_some returned (handed on at the next)
        self._pool = pool if self.config.overflow == "block" else None
        if self._pool is not None:
            self._pool.members += 1
        self._charged = 0  # bytes of our replay buffer drawn from the pool
        self._att: Attachment | None = None
        # the engine's wakeup, and the receiving and sending application's (each woken
        # only by what it waits for; _notify wakes all three)
        self._wake = trio.Event()
        self._rx_wake = trio.Event()
        self._tx_wake = trio.Event()
        self._recv: deque[tuple[bytes | bytearray | memoryview, Attachment | None]] = deque()
        self._failure: StreamFailedError | None = None
        self._fail_link: PeerLink | None = None  # where we told the peer
        self.finished = trio.Event()
        self.attachments = 0  # how many times a path was attached (1 = never moved)
        self.on_finished: Any = None  # callback(stream) when the engine ends
        self.peer_identity = ""  # acceptor: the identity of the relay that opened it

    # ------------------------------------------------------------ introspection
    @property
    def short_id(self) -> str:
        return self.session_id[:4].hex()

    @property
    def failure(self) -> StreamFailedError | None:
        return self._failure

    @property
    def link(self) -> PeerLink | None:
        return self._att.link if self._att is not None else None

    @property
    def delivered(self) -> int:
        """Bytes of ours the far end has handed on: what it acknowledged, or all we
        wrote once its session completed (a clean end needs no last ACK)."""
        return self.session.written if self.machine.clean else self.session.acked

    def _notify(self) -> None:
        """Wake every waiter (the engine and both sides of the application)."""
        self._wake.set()
        self._wake = trio.Event()
        self._notify_rx()
        self._notify_tx()

    def _notify_rx(self) -> None:
        """Received bytes are there to take (the data path: the engine is not concerned)."""
        self._rx_wake.set()
        self._rx_wake = trio.Event()

    def _notify_tx(self) -> None:
        """Room in the replay buffer (an ACK), and a writer turn if something is queued."""
        self._tx_wake.set()
        self._tx_wake = trio.Event()
        self._kick_send()

    def _kick_send(self) -> None:
        """Ask the link for a writer turn if we have something to send on it."""
        att = self._att
        if (
            att is not None
            and att.current
            and not self.machine.waiting_answer
            and self.session.has_pending()
        ):
            att.link.want_send(att.sid)

    def _produce(self, att: Attachment, max_bytes: int) -> bool:
        """Our writer turn: queue up to ``max_bytes``; True if more is ready to go."""
        m = self.machine
        if m.waiting_answer or m.ended:
            return False
        link, s = att.link, self.session
        sent = 0
        try:
            while sent < max_bytes:
                credit = link.send_credit(att.sid)
                if credit <= 0:
                    return False  # on_credit brings us back
                nxt = s.next_chunk(min(credit, max_bytes - sent))
                if nxt is None:
                    break
                link.send_data(att.sid, nxt[0], nxt[1])
                sent += len(nxt[1])
            eof = s.take_eof()
        except GapError as e:
            self._fail(e.code, str(e))
            return False
        if eof is not None:
            link.send_eof(att.sid, eof)
        if s.done or (m.app_closed and s.eof_acked):
            # complete: wake the engine, which ends the path (StreamMachine.completion);
            # tested inline here, this runs on every writer turn
            self._wake.set()
            self._wake = trio.Event()
        return sent > 0 and s.has_pending() and link.send_credit(att.sid) > 0

    async def _wait(self) -> None:  # the engine
        await self._wake.wait()

    def _recharge(self) -> None:
        """Charge the pool for what our replay buffer holds beyond the reserve."""
        pool = self._pool
        if pool is None:
            return
        want = max(0, self.session.buffered - pool.reserve)
        if self.finished.is_set():
            want = 0
        delta = want - self._charged
        if delta > 0:
            pool.take(delta)
        elif delta < 0:
            pool.give(-delta)
        self._charged = want

    # ------------------------------------------------------------ handlers (reader task)
    def _on_data(self, att: Attachment, offset: int, payload: bytes | bytearray) -> None:
        try:
            new = self.session.on_data(offset, payload)
        except ResumeError as e:
            self._fail(e.code, str(e))
            return
        dup = len(payload) - len(new)
        if dup:
            att.link.consumed(att.sid, dup)
        if new:
            if self.machine.app_closed:
                att.link.consumed(att.sid, len(new))
                self.session.hand_on(len(new))
            else:
                self._recv.append((new, att))
                self._notify_rx()
                return
        self._notify()

    def _flush_ack(self, att: Attachment) -> None:
        ack = self.session.ack_due(force=True)
        if ack is not None:
            att.link.send_ack(att.sid, ack[0], ack[1])

    def _on_eof(self, offset: int) -> None:
        try:
            self.session.on_eof(offset)
        except ResumeError as e:
            self._fail(e.code, str(e))
            return
        self._notify()

    def _on_ack(self, att: Attachment, offset: int, fin: bool) -> None:
        try:
            if self.machine.waiting_answer:  # the acceptor's resume point
                self.session.resume(offset, fin)
                self._recharge()
                self.machine.handle(PathInput.ANSWERED)
                self.attachments += 1
            else:
                if self.session.on_ack(offset, fin) and self._pool is not None:
                    self._recharge()
                if not fin:  # room for the sender; nothing the engine waits for
                    self._notify_tx()
                    return
        except ResumeError as e:
            self._fail(e.code, str(e))
            return
        self._notify()

    def _on_reset(self, att: Attachment, code: int, reason: str) -> None:
        att.current = False
        if self._att is att:
            self._att = None
        self.session.detach()
        event = self.machine.reset_input(code)
        if event is PathInput.SESSION_LOST:
            self._continue_elsewhere(reason)
        elif event is PathInput.FAIL:
            self._fail(code, reason or "reset by peer", send=False)
        else:
            self.machine.handle(event)
            if event is PathInput.PATH_LOST:
                log.debug("stream %s: path lost (%s), will resume", self.short_id, wire(reason))
        self._notify()

    def _continue_elsewhere(self, reason: str) -> None:
        """The acceptor lost our session (it restarted): carry on in a new one."""
        try:
            start, recv_start = self.session.continuation_point()
        except GapError as e:
            self._fail(e.code, str(e), send=False)
            return
        old = self.short_id
        self.session_id = os.urandom(16)
        self.machine.lose_session(start)
        log.warning(
            "stream %s: the peer lost the session (%s); continuing as %s from offset %d"
            " (%d bytes not acknowledged), received %d",
            old,
            wire(reason or "unknown"),
            self.short_id,
            start,
            self.session.written - start,
            recv_start,
        )

    def _fail(self, code: int, reason: str, *, send: bool = True) -> None:
        att, self._att = self._att, None
        if self.machine.fail(code, local=send):
            self._failure = StreamFailedError(code, reason)
            log.warning("stream %s: %s", self.short_id, wire(str(self._failure)))
            if att is not None and att.current and send:
                self._fail_link = att.link
                att.link.detach(att.sid, code, reason)
        if att is not None:
            att.current = False
        self.session.detach()
        self._notify()

    # ------------------------------------------------------------ path changes
    def move(self, reason: str = "route changed") -> None:
        """Leave the current path; the engine re-attaches through the connector."""
        att, self._att = self._att, None
        if att is not None and att.current:
            att.current = False
            att.link.detach(att.sid, ErrorCode.SUPERSEDED, reason)
            self.machine.handle(PathInput.PATH_LOST)
        self.session.detach()
        self._notify()

    def _attach_accepted(self, link: PeerLink, sid: int, recv_offset: int) -> None:
        """Acceptor: (re)attach on ``link``/``sid`` whose OPEN reported ``recv_offset``."""
        old = self._att
        if old is not None and old.current:
            old.current = False
            old.link.detach(old.sid, ErrorCode.SUPERSEDED, "resumed on another path")
        self.session.detach()
        att = Attachment(self, link)
        att.sid = sid
        link.attach(sid, att)
        self._att = att
        self.machine.handle(PathInput.ATTACH)
        try:
            self.session.resume(recv_offset)
        except ResumeError as e:
            self._fail(e.code, str(e))
            return
        self._recharge()
        off, fin = self.session.resume_point()
        link.send_ack(sid, off, fin)
        self.attachments += 1
        self._notify()

    def _send_open(self, link: PeerLink) -> Attachment | None:
        """Opener: attach on a new stream of ``link``; None if the link takes none."""
        assert self._connector is not None
        att = Attachment(self, link)
        recv_off, _fin = self.session.resume_point()
        self.session.detach()
        resume, cont = self.machine.open_flags()
        if cont is not None:  # a new session: its acceptor sends from what we hold
            recv_off = self.session.recv_offset
        try:
            att.sid = link.open(
                att, self.session_id, recv_off, self.header, resume=resume, continues=cont
            )
        except (LinkDeadError, LinkClosingError):
            self._connector.link_failed(link)
            return None
        self._att = att
        self.machine.handle(PathInput.SEND_OPEN)
        return att

    def _finish(self, att: Attachment, code: int, reason: str) -> None:
        self.machine.handle(PathInput.COMPLETE)
        att.current = False
        self._att = None
        att.link.detach(att.sid, code, reason)
        self._notify()
