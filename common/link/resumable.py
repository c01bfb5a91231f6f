"""Resumable streams over peer links: survive link loss and route changes.

``ResumableStream`` is a ``trio.abc.HalfCloseableStream`` backed by a
``common.proto.link.resume.ResumeSession``. Its engine task (``run()``) attaches the
session to a stream on a ``PeerLink`` and moves bytes; when the link dies or the
route changes it re-attaches on a new link and both ends resume from the
offsets they have received:

* the **opener** (ingress relay) asks its ``Connector`` (``common.link.route.Router``)
  for a link, with exponential backoff, and sends ``OPEN(resume, recv_offset)``;
  the acceptor's first ACK on that stream is its resume point;
* the **acceptor** (egress relay or appliance endpoint) keeps the session in a
  ``SessionTable`` shared by all its links; an OPEN with the RESUME flag on any
  link re-attaches it (superseding the old attachment), and a session nobody
  re-attaches within ``resume_timeout`` ends with TIMEOUT.

Bytes are acknowledged only once the application has handed them on (its next
``receive_some`` call, or ``aclose``): a relay killed with bytes in its memory
has not acknowledged them. When the acceptor answers a resume with
UNKNOWN_SESSION (it restarted), the opener continues in a new session
(``OPEN`` with the CONTINUE flag) that sends again every unacknowledged byte;
the acceptor's side exposes ``continues`` so the stream's next hop learns where
it starts (common.proto.link.header, version 2).

Needed bytes missing from a replay buffer end the stream with an explicit GAP
reset at both ends (``StreamFailedError`` with ``code == ErrorCode.GAP``).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from common.link.peerlink import LinkConfig, LinkDeadError, PeerLink
from common.ops.wiretext import wire
from common.proto.link.frames import ErrorCode
from common.proto.link.mux import LinkClosingError, StreamOpened
from common.proto.link.resume import GapError, ResumeError, ResumeProtocolError, ResumeSession

log = logging.getLogger("relay.resumable")

_RETRYABLE = {ErrorCode.INTERNAL, ErrorCode.REFUSED, ErrorCode.SUPERSEDED}


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


class ReplayPool:
    """Replay-buffer memory shared by many streams (one Router or SessionTable).

    Each stream may always hold ``reserve`` bytes; beyond that it draws from the
    pool, at most its fair share (``limit / streams``), so a thousand streams
    cannot each fill a ``replay_limit`` buffer and one fast stream cannot take
    everything: the memory a relay holds for replay is bounded by
    ``limit + streams * reserve``. Waiting streams are woken in turn (FIFO).
    """

    def __init__(self, limit: int, reserve: int) -> None:
        self.limit = limit
        self.reserve = reserve
        self.used = 0
        self.members = 0
        self._waiting: deque[ResumableStream] = deque()

    def available(self) -> int:
        return max(0, self.limit - self.used)

    def share(self) -> int:
        return self.limit // max(1, self.members)

    def take(self, n: int) -> None:
        self.used += n

    def give(self, n: int) -> None:
        if n > 0:
            self.used -= n
            # wake waiting streams in turn, about one per reserve's worth freed
            for _ in range(min(len(self._waiting), max(1, n // max(self.reserve, 1)))):
                self._waiting.popleft()._notify()

    def enqueue(self, stream: ResumableStream) -> None:
        self._waiting.append(stream)


class Connector(Protocol):
    async def get_link(self) -> PeerLink: ...
    def link_failed(self, link: PeerLink) -> None: ...


class _Attachment:
    """One stream on one link, as a handler; stale once ``current`` is False."""

    __slots__ = ("current", "link", "sid", "stream")

    def __init__(self, stream: ResumableStream, link: PeerLink) -> None:
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


class ResumableStream(trio.abc.HalfCloseableStream):
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
        self._continue_from: int | None = None  # opener: the next OPEN continues from here
        self._handing = 0  # bytes the last receive_some returned (handed on at the next)
        self._pool = pool if self.config.overflow == "block" else None
        if self._pool is not None:
            self._pool.members += 1
        self._charged = 0  # bytes of our replay buffer drawn from the pool
        self._att: _Attachment | None = None
        self._opening = False  # opener: waiting for the acceptor's resume point
        self._ever_attached = False
        self._wake = trio.Event()
        self._recv: deque[tuple[bytes | bytearray | memoryview, _Attachment | None]] = deque()
        self._recv_bytes = 0
        self._failure: StreamFailedError | None = None
        self._fail_local = False  # we detected the failure (the peer may not know yet)
        self._fail_link: PeerLink | None = None  # where we told the peer
        self._clean = False
        self._app_closed = False
        self._send_closed = False
        self.finished = trio.Event()
        self._finished_flag = False
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

    def _terminal(self) -> bool:
        return self._failure is not None or self._clean

    @property
    def delivered(self) -> int:
        """Bytes of ours the far end has handed on: what it acknowledged, or all we
        wrote once its session completed (a clean end needs no last ACK)."""
        return self.session.written if self._clean else self.session.acked

    def _notify(self) -> None:
        self._wake.set()
        self._wake = trio.Event()
        self._kick_send()

    def _kick_send(self) -> None:
        """Ask the link for a writer turn if we have something to send on it."""
        att = self._att
        if att is not None and att.current and not self._opening and self.session.has_pending():
            att.link.want_send(att.sid)

    def _produce(self, att: _Attachment, max_bytes: int) -> bool:
        """Our writer turn: queue up to ``max_bytes``; True if more is ready to go."""
        if self._opening or self._terminal():
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
            self._fail(ErrorCode.GAP, str(e))
            return False
        if eof is not None:
            link.send_eof(att.sid, eof)
        if s.done or (self._app_closed and s.eof_acked):
            self._wake.set()  # the engine closes the stream
            self._wake = trio.Event()
        return sent > 0 and s.has_pending() and link.send_credit(att.sid) > 0

    async def _wait(self) -> None:
        await self._wake.wait()

    # ------------------------------------------------------------ application side
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._send_closed:
            raise trio.ClosedResourceError("stream was closed for sending")
        await trio.lowlevel.checkpoint()
        if self._failure is not None:
            raise self._failure
        buf = memoryview(bytes(data))  # the caller may reuse its buffer; we keep ours for replay
        pos, n = 0, len(buf)
        while pos < n:
            if self._failure is not None:
                raise self._failure
            if self._clean:
                raise trio.BrokenResourceError("peer closed the stream")
            chunk = buf[pos:] if pos else buf
            pool = self._pool
            if pool is not None:
                allowed = self._pool_allowance(pool)
                if allowed <= 0:
                    await self._wait_pool(pool)
                    continue
                if allowed < len(chunk):
                    chunk = chunk[:allowed]
            k = self.session.write(chunk)
            if k:
                pos += k
                if pool is not None:
                    self._recharge()
                self._notify()
            else:
                await self._wait()

    def _pool_allowance(self, pool: ReplayPool) -> int:
        fair = max(0, pool.share() - self._charged)
        return max(0, pool.reserve - self.session.buffered) + min(pool.available(), fair)

    def _recharge(self) -> None:
        """Charge the pool for what our replay buffer holds beyond the reserve."""
        pool = self._pool
        if pool is None:
            return
        want = max(0, self.session.buffered - pool.reserve)
        if self._finished_flag:
            want = 0
        delta = want - self._charged
        if delta > 0:
            pool.take(delta)
        elif delta < 0:
            pool.give(-delta)
        self._charged = want

    async def _wait_pool(self, pool: ReplayPool) -> None:
        """Until the pool has room (we are woken in turn) or our own acks free some."""
        pool.enqueue(self)
        await self._wait()

    async def wait_send_all_might_not_block(self) -> None:
        while self.session.room() == 0 and not self._terminal():
            await self._wait()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._send_closed:
            return
        self._send_closed = True
        self.session.write_eof()
        self._notify()

    def _handed_on(self) -> None:
        """What the last receive_some returned is written downstream: acknowledge it."""
        if self._handing:
            self.session.hand_on(self._handing)
            self._handing = 0
            att = self._att
            if att is not None and att.current and not self._opening:
                ack = self.session.ack_due(force=not self._recv)
                if ack is not None:
                    att.link.send_ack(att.sid, ack[0], ack[1])

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        self._handed_on()
        await trio.lowlevel.checkpoint()
        limit = max_bytes or 256 * 1024
        while True:
            if self._recv:
                return self._take(limit)
            if self.session.eof_received or self._clean:
                return b""
            if self._failure is not None:
                raise self._failure
            if self._app_closed:
                raise trio.ClosedResourceError("stream was closed")
            await self._wait()

    def _take(self, limit: int) -> bytes | bytearray:
        parts: list[bytes | bytearray | memoryview] = []
        got = 0
        while self._recv and got < limit:
            chunk, att = self._recv[0]
            k = len(chunk)
            if got + k > limit:
                k = limit - got
                mv = memoryview(chunk)
                parts.append(mv[:k])
                self._recv[0] = (mv[k:], att)
            else:
                parts.append(chunk)
                self._recv.popleft()
            got += k
            if att is not None and att.current:
                att.link.consumed(att.sid, k)
        self._recv_bytes -= got
        self._handing += got
        if len(parts) == 1:
            p = parts[0]
            return p if not isinstance(p, memoryview) else bytes(p)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Close for the application; what was written is still delivered (lingering)."""
        if not self._app_closed:
            self._app_closed = True
            self._send_closed = True
            if not self.session.eof_written:
                self.session.write_eof()
            while self._recv:
                self._take(1 << 30)
            self._handed_on()  # nobody reads the rest: let the peer free it
            self._notify()
        await trio.lowlevel.checkpoint()

    def abort(self, reason: str = "aborted", code: int = ErrorCode.CANCEL) -> None:
        """End the stream now, telling the peer (RESET ``code``); unsent bytes are dropped."""
        self._fail(code, reason)

    async def wait_finished(self) -> None:
        await self.finished.wait()

    # ------------------------------------------------------------ handlers (reader task)
    def _on_data(self, att: _Attachment, offset: int, payload: bytes | bytearray) -> None:
        try:
            new = self.session.on_data(offset, payload)
        except ResumeProtocolError as e:
            self._fail(ErrorCode.PROTOCOL, str(e))
            return
        dup = len(payload) - len(new)
        if dup:
            att.link.consumed(att.sid, dup)
        if new:
            if self._app_closed:
                att.link.consumed(att.sid, len(new))
                self.session.hand_on(len(new))
            else:
                self._recv.append((new, att))
                self._recv_bytes += len(new)
        self._notify()

    def _flush_ack(self, att: _Attachment) -> None:
        ack = self.session.ack_due(force=True)
        if ack is not None:
            att.link.send_ack(att.sid, ack[0], ack[1])

    def _on_eof(self, offset: int) -> None:
        try:
            self.session.on_eof(offset)
        except ResumeProtocolError as e:
            self._fail(ErrorCode.PROTOCOL, str(e))
            return
        self._notify()

    def _on_ack(self, att: _Attachment, offset: int, fin: bool) -> None:
        try:
            if self._opening:
                self.session.resume(offset, fin)
                self._recharge()
                self._opening = False
                self._continue_from = None
                self._ever_attached = True
                self.attachments += 1
            else:
                if self.session.on_ack(offset, fin) and self._pool is not None:
                    self._recharge()
        except GapError as e:
            self._fail(ErrorCode.GAP, str(e))
            return
        except ResumeProtocolError as e:
            self._fail(ErrorCode.PROTOCOL, str(e))
            return
        self._notify()

    def _on_reset(self, att: _Attachment, code: int, reason: str) -> None:
        att.current = False
        if self._att is att:
            self._att = None
        self.session.detach()
        self._opening = False
        if code == ErrorCode.NO_ERROR:
            # The peer's session is complete: it has all we sent, we have its EOF.
            self._clean = True
        elif code in _RETRYABLE:
            log.debug("stream %s: path lost (%s), will resume", self.short_id, wire(reason))
        elif code == ErrorCode.UNKNOWN_SESSION and self.opener and self._ever_attached:
            self._continue_elsewhere(reason)
        else:
            self._fail(code, reason or "reset by peer", send=False)
        self._notify()

    def _continue_elsewhere(self, reason: str) -> None:
        """The acceptor lost our session (it restarted): carry on in a new one."""
        try:
            start, recv_start = self.session.continuation_point()
        except GapError as e:
            self._fail(ErrorCode.GAP, str(e), send=False)
            return
        old = self.short_id
        self.session_id = os.urandom(16)
        self._continue_from = start
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
        if self._failure is None and not self._clean:
            self._failure = StreamFailedError(code, reason)
            self._fail_local = send
            log.warning("stream %s: %s", self.short_id, wire(str(self._failure)))
            if att is not None and att.current and send:
                self._fail_link = att.link
                att.link.detach(att.sid, code, reason)
        if att is not None:
            att.current = False
        self.session.detach()
        self._notify()

    async def _deliver_failure(self) -> None:
        """Opener: make sure the acceptor learns why the stream ended (best effort, bounded)."""
        assert self._failure is not None and self._connector is not None
        code, reason = self._failure.code, self._failure.reason
        cfg = self.config
        with trio.move_on_after(2 * cfg.mux.dead_after + 1):
            link = self._fail_link
            if link is not None and await link.barrier():
                return  # the peer processed our RESET
            backoff = cfg.reconnect_min
            while True:
                try:
                    link = await self._connector.get_link()
                    att = _Attachment(self, link)
                    att.current = False
                    sid = link.open(
                        att, self.session_id, self.session.recv_offset, self.header, resume=True
                    )
                    link.detach(sid, code, reason)
                    if await link.barrier():
                        return
                except Exception as e:  # any path failure: retry
                    log.debug("stream %s: cannot report failure yet: %s", self.short_id, e)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, cfg.reconnect_max)

    # ------------------------------------------------------------ path changes
    def move(self, reason: str = "route changed") -> None:
        """Leave the current path; the engine re-attaches through the connector."""
        att, self._att = self._att, None
        if att is not None and att.current:
            att.current = False
            att.link.detach(att.sid, ErrorCode.SUPERSEDED, reason)
        self.session.detach()
        self._opening = False
        self._notify()

    def _attach_accepted(self, link: PeerLink, sid: int, recv_offset: int) -> None:
        """Acceptor: (re)attach on ``link``/``sid`` whose OPEN reported ``recv_offset``."""
        old = self._att
        if old is not None and old.current:
            old.current = False
            old.link.detach(old.sid, ErrorCode.SUPERSEDED, "resumed on another path")
        self.session.detach()
        att = _Attachment(self, link)
        att.sid = sid
        link.attach(sid, att)
        self._att = att
        try:
            self.session.resume(recv_offset)
        except GapError as e:
            self._fail(ErrorCode.GAP, str(e))
            return
        except ResumeProtocolError as e:
            self._fail(ErrorCode.PROTOCOL, str(e))
            return
        self._recharge()
        off, fin = self.session.resume_point()
        link.send_ack(sid, off, fin)
        self.attachments += 1
        self._notify()

    # ------------------------------------------------------------ engine
    async def run(self) -> None:
        try:
            try:
                if self.opener:
                    await self._run_opener()
                else:
                    await self._run_acceptor()
            except GapError as e:
                self._fail(ErrorCode.GAP, str(e))
            except ResumeError as e:
                self._fail(ErrorCode.PROTOCOL, str(e))
            if self.opener and self._failure is not None and self._fail_local:
                await self._deliver_failure()
        finally:
            if not self._terminal():
                # an acceptor going away leaves the session to be carried on (retryable)
                self._fail(
                    ErrorCode.CANCEL if self.opener else ErrorCode.INTERNAL, "relay shutting down"
                )
            self._finished_flag = True
            self._recharge()  # give our share back to the pool
            if self._pool is not None:
                self._pool.members -= 1
            self.finished.set()
            self._notify()
            if self.on_finished is not None:
                self.on_finished(self)

    async def _run_opener(self) -> None:
        assert self._connector is not None
        cfg = self.config
        backoff = cfg.reconnect_min
        lost_at = trio.current_time()  # since when we have had no working path
        while not self._terminal():
            remaining = lost_at + cfg.resume_timeout - trio.current_time()
            if remaining <= 0:
                self._fail(ErrorCode.TIMEOUT, f"no path to the peer for {cfg.resume_timeout:g}s")
                return
            try:
                with trio.fail_after(remaining):
                    link = await self._connector.get_link()
            except Exception as e:  # any connect failure: DNS, refused, TLS, identity, timeout
                log.info("stream %s: no path (%s), retrying in %.2fs", self.short_id, e, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, cfg.reconnect_max)
                continue
            att = _Attachment(self, link)
            recv_off, _fin = self.session.resume_point()
            self.session.detach()
            cont = self._continue_from
            if cont is not None:  # a new session: its acceptor sends from what we hold
                recv_off = self.session.recv_offset
            try:
                att.sid = link.open(
                    att,
                    self.session_id,
                    recv_off,
                    self.header,
                    resume=self._ever_attached and cont is None,
                    continues=cont,
                )
            except (LinkDeadError, LinkClosingError):
                self._connector.link_failed(link)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, cfg.reconnect_max)
                continue
            self._att = att
            self._opening = True
            attached_before = self.attachments
            await self._transmit(att)
            if self.attachments == attached_before and not self._terminal():
                # refused or lost before the acceptor answered: back off
                await trio.sleep(backoff)
                backoff = min(backoff * 2, cfg.reconnect_max)
            else:
                backoff = cfg.reconnect_min
                lost_at = trio.current_time()

    async def _run_acceptor(self) -> None:
        timeout = self.config.resume_timeout
        while not self._terminal():
            att = self._att
            if att is None or not att.current:
                with trio.move_on_after(timeout):
                    while (self._att is None or not self._att.current) and not self._terminal():
                        await self._wait()
                    continue
                self._fail(ErrorCode.TIMEOUT, f"peer did not resume within {timeout:g}s")
                return
            await self._transmit(att)

    async def _transmit(self, att: _Attachment) -> None:
        """Watch over ``att`` until it is detached or the session ends.

        The bytes themselves move in the link writer's round-robin turns
        (``_produce``); this task finishes the stream when it is complete.
        """
        link = att.link
        s = self.session
        self._kick_send()
        while att.current and not self._terminal():
            if not self._opening:
                if s.done:
                    self._finish(att, ErrorCode.NO_ERROR, "done")
                    return
                if self._app_closed and s.eof_acked:
                    # we closed and everything we wrote arrived; nobody reads the rest
                    self._finish(att, ErrorCode.CANCEL, "closed by the application")
                    return
            if not link.alive:
                # the link is going down; its on_reset for us follows at once
                await link.closed.wait()
                await trio.lowlevel.checkpoint()
                continue
            await self._wait()

    def _finish(self, att: _Attachment, code: int, reason: str) -> None:
        self._clean = True
        att.current = False
        self._att = None
        att.link.detach(att.sid, code, reason)
        self._notify()


@dataclass(frozen=True)
class Accepted:
    stream: ResumableStream
    header: bytes
    peer_identity: str


class SessionTable:
    """The acceptor's sessions, shared by all its links; start with ``open_session_table``."""

    def __init__(
        self,
        nursery: trio.Nursery,
        config: LinkConfig | None = None,
        *,
        accept_backlog: int = 1024,
        tombstones: int = 4096,
    ) -> None:
        self.config = config or LinkConfig()
        self._nursery = nursery
        self._sessions: dict[bytes, ResumableStream] = {}
        # finished sessions: (recv_offset, eof_received, code, reason), so a late resume
        # learns how the session ended instead of "unknown"
        self._tombs: OrderedDict[bytes, tuple[int, bool, int, str]] = OrderedDict()
        self._max_tombs = tombstones
        self.pool = ReplayPool(self.config.replay_pool, self.config.replay_reserve)
        self._send, self._recv = trio.open_memory_channel[Accepted](accept_backlog)

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: bytes) -> ResumableStream | None:
        return self._sessions.get(session_id)

    async def accept(self) -> Accepted:
        return await self._recv.receive()

    def __aiter__(self) -> SessionTable:
        return self

    async def __anext__(self) -> Accepted:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def on_open(self, link: PeerLink, ev: StreamOpened) -> None:
        """``PeerLink`` on_open callback (reader task, synchronous)."""
        sid = ev.stream_id
        # An OPEN without the RESUME flag for a session we have, from the same peer,
        # is the opener's retry after a link died before our first ACK reached it
        # (it cannot know we got the OPEN): treat it as a resume. Session ids are 16
        # random bytes, so it is never another stream.
        retry = (
            not ev.resume
            and ev.session_id in self._sessions
            and self._sessions[ev.session_id].peer_identity == link.peer_identity
        )
        if ev.resume or retry:
            st = self._sessions.get(ev.session_id)
            if st is not None:
                if st.peer_identity and link.peer_identity != st.peer_identity:
                    # only the relay that opened a session may resume it
                    log.warning(
                        "resume of stream %s by %s refused (opened by %s)",
                        st.short_id,
                        wire(link.peer_identity or "plaintext"),
                        wire(st.peer_identity),
                    )
                    link.detach(sid, ErrorCode.REFUSED, "session belongs to another peer")
                    return
                st._attach_accepted(link, sid, ev.recv_offset)
                return
            tomb = self._tombs.get(ev.session_id)
            if tomb is not None:
                if tomb[2] == ErrorCode.NO_ERROR:
                    link.send_ack(sid, tomb[0], tomb[1])
                    link.detach(sid, ErrorCode.NO_ERROR, "session already complete")
                else:
                    link.detach(sid, tomb[2], tomb[3])
                return
            link.detach(sid, ErrorCode.UNKNOWN_SESSION, "no such session here")
            return
        if ev.session_id in self._sessions or ev.session_id in self._tombs:
            link.detach(sid, ErrorCode.REFUSED, "duplicate session id")
            return
        cont = (ev.continues, ev.recv_offset) if ev.continues is not None else None
        st = ResumableStream(
            ev.session_id, ev.header, self.config, opener=False, pool=self.pool, continues=cont
        )
        st.peer_identity = link.peer_identity
        try:
            self._send.send_nowait(Accepted(st, ev.header, link.peer_identity))
        except trio.WouldBlock:
            link.detach(sid, ErrorCode.REFUSED, "accept backlog full")
            return
        self._sessions[ev.session_id] = st
        st.on_finished = self._finished
        st._attach_accepted(link, sid, ev.recv_offset)
        self._nursery.start_soon(st.run)

    def leave_all(self, reason: str) -> None:
        """Going away (a drain's end): every session is left to its opener to carry
        on (RESET INTERNAL, retryable), here after a restart or elsewhere."""
        for st in list(self._sessions.values()):
            st.abort(reason, code=ErrorCode.INTERNAL)

    def _finished(self, st: ResumableStream) -> None:
        self._sessions.pop(st.session_id, None)
        fail = st.failure
        code, reason = (fail.code, fail.reason) if fail is not None else (ErrorCode.NO_ERROR, "")
        self._tombs[st.session_id] = (st.session.recv_offset, st.session.eof_received, code, reason)
        while len(self._tombs) > self._max_tombs:
            self._tombs.popitem(last=False)
