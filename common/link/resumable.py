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
  ``SessionTable`` (common.link.sessions) shared by all its links; an OPEN with
  the RESUME flag on any link re-attaches it (superseding the old attachment),
  and a session nobody re-attaches within ``resume_timeout`` ends with TIMEOUT.

Bytes are acknowledged only once the application has handed them on (its next
``receive_some`` call, or ``aclose``): a relay killed with bytes in its memory
has not acknowledged them. When the acceptor answers a resume with
UNKNOWN_SESSION (it restarted), the opener continues in a new session
(``OPEN`` with the CONTINUE flag) that sends again every unacknowledged byte;
the acceptor's side exposes ``continues`` so the stream's next hop learns where
it starts (common.proto.link.header, version 2).

Which path the stream is on, and how it ended, is the sans-IO state machine
``common.proto.link.resume_state.StreamMachine``; this adapter carries its
decisions out. Needed bytes missing from a replay buffer end the stream with
an explicit GAP reset at both ends (``StreamFailedError`` with ``code == ErrorCode.GAP``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from common.io.pipepool import Pipe
from common.link.direct import drain, splice_out
from common.link.replay import ReplayPool
from common.link.stream_path import Attachment, Connector, StreamFailedError, StreamPath
from common.proto.link.frames import MAX_PAYLOAD_LIMIT, ErrorCode
from common.proto.link.resume import ResumeError
from common.proto.link.resume_state import AppInput, Backoff, StreamStateError

__all__ = ["Connector", "ReplayPool", "ResumableStream", "StreamFailedError"]

log = logging.getLogger("relay.resumable")


TAKE_WHOLE = 64 * 1024  # a received payload this large is handed out alone, as it is


class ResumableStream(StreamPath, trio.abc.HalfCloseableStream):
    _direct: tuple[int, Callable[[int], None] | None] | None = None  # deliver_to
    _rx_parked = False  # the application waits in receive_some, holding nothing
    #: what ``receive_some`` should be asked for: it hands out the payloads it holds
    #: (up to a frame, ``MAX_PAYLOAD_LIMIT``) without copying them when they fit
    receive_size = MAX_PAYLOAD_LIMIT

    # ------------------------------------------------------------ application side
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.machine.send_closed:
            raise trio.ClosedResourceError("stream was closed for sending")
        await trio.lowlevel.checkpoint()
        if self._failure is not None:
            raise self._failure
        buf = memoryview(bytes(data))  # the caller may reuse its buffer; we keep ours for replay
        pos, n = 0, len(buf)
        while pos < n:
            if self._failure is not None:
                raise self._failure
            if self.machine.clean:
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
                self._kick_send()  # (nobody waits for a write: no wakeups)
            else:
                await self._tx_wake.wait()

    @property
    def replay_buffered(self) -> int:
        """Bytes held for replay: sent, not yet acknowledged by the far end (a metric)."""
        return self.session.buffered

    def _pool_allowance(self, pool: ReplayPool) -> int:
        fair = max(0, pool.share() - self._charged)
        return max(0, pool.reserve - self.session.buffered) + min(pool.available(), fair)

    async def _wait_pool(self, pool: ReplayPool) -> None:
        """Until the pool has room (we are woken in turn) or our own acks free some."""
        pool.enqueue(self)
        await self._tx_wake.wait()

    async def wait_send_all_might_not_block(self) -> None:
        while self.session.room() == 0 and not self.machine.ended:
            await self._tx_wake.wait()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if not self.machine.app_input(AppInput.SEND_EOF):
            return
        self.session.write_eof()
        self._notify()

    def _handed_on(self) -> None:
        """What the last receive_some returned is written downstream: acknowledge it."""
        if self._handing:
            self.session.hand_on(self._handing)
            self._handing = 0
            att = self._att
            if att is not None and att.current and not self.machine.waiting_answer:
                ack = self.session.ack_due(force=not self._recv)
                if ack is not None:
                    att.link.send_ack(att.sid, ack[0], ack[1])

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        self._handed_on()
        await trio.lowlevel.checkpoint()
        limit = max_bytes or 256 * 1024
        m = self.machine
        while True:
            if self._recv:
                return self._take(limit)
            if self.session.eof_received or m.clean:
                return b""
            if self._failure is not None:
                raise self._failure
            if m.app_closed:
                raise trio.ClosedResourceError("stream was closed")
            self._rx_parked = True  # (nothing held: payloads may go straight out)
            try:
                await self._rx_wake.wait()
            finally:
                self._rx_parked = False

    def _take(self, limit: int) -> bytes | bytearray:
        head, att = self._recv[0]
        k = len(head)
        if TAKE_WHOLE <= k <= limit and not isinstance(head, memoryview):
            # a large payload goes out as it came (no join, no copy)
            self._recv.popleft()
            if att is not None and att.current:
                att.link.consumed(att.sid, k)
            self._handing += k
            return head
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
        self._handing += got
        if len(parts) == 1:
            p = parts[0]
            return p if not isinstance(p, memoryview) else bytes(p)
        return b"".join(parts)

    # ------------------------------------------------------------ straight out
    def deliver_to(self, fd: int | None, moved: Callable[[int], None] | None = None) -> None:
        """Let the link's reader move received payloads straight into ``fd`` (the
        socket the application writes what it receives to) while the application
        waits in ``receive_some`` holding nothing; ``moved(n)`` counts them.
        None: stop (before the application writes to ``fd`` otherwise)."""
        self._direct = None if fd is None else (fd, moved)

    def direct_ready(self, att: Attachment, offset: int) -> bool:
        """(The reader:) may the payload at ``offset`` go straight out?"""
        return (
            self._direct is not None
            and self._rx_parked
            and att.current
            and not self._recv
            and offset == self.session.recv_offset == self.session.handed
            and not self.session.eof_received
            and self._failure is None
        )

    def take_passed(self, att: Attachment, offset: int, pipe: Pipe, n: int) -> None:
        """(The reader:) ``n`` payload bytes at ``offset`` are in ``pipe``: move them
        straight out if we still may, else (the rest) as received bytes. Empties it."""
        done = 0
        direct = self._direct
        if direct is not None and self.direct_ready(att, offset):
            done = splice_out(pipe, direct[0], n)
            if done < 0:  # the destination failed: the application will see it
                self._direct, done = None, 0
        if done:
            self.session.on_direct(offset, done)
            att.link.consumed(att.sid, done)
            if direct is not None and direct[1] is not None:
                direct[1](done)
            ack = self.session.ack_due()
            if ack is not None and not self.machine.waiting_answer:
                att.link.send_ack(att.sid, ack[0], ack[1])
        if done < n:
            att.on_data(offset + done, drain(pipe, n - done))

    async def aclose(self) -> None:
        """Close for the application; what was written is still delivered (lingering)."""
        if self.machine.app_input(AppInput.CLOSE):
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

    # ------------------------------------------------------------ engine
    async def run(self) -> None:
        try:
            try:
                if self.opener:
                    await self._run_opener()
                else:
                    await self._run_acceptor()
            except (ResumeError, StreamStateError) as e:
                self._fail(e.code, str(e))
            if self.opener and self._failure is not None and self.machine.local:
                await self._deliver_failure()
        finally:
            if not self.machine.ended:
                # an acceptor going away leaves the session to be carried on (retryable)
                self._fail(
                    ErrorCode.CANCEL if self.opener else ErrorCode.INTERNAL, "relay shutting down"
                )
            self.finished.set()
            self._recharge()  # give our share back to the pool
            if self._pool is not None:
                self._pool.members -= 1
            self._notify()
            if self.on_finished is not None:
                self.on_finished(self)

    async def _run_opener(self) -> None:
        assert self._connector is not None
        cfg = self.config
        backoff = Backoff(cfg.reconnect_min, cfg.reconnect_max)
        lost_at = trio.current_time()  # since when we have had no working path
        while not self.machine.ended:
            remaining = lost_at + cfg.resume_timeout - trio.current_time()
            if remaining <= 0:
                self._fail(ErrorCode.TIMEOUT, f"no path to the peer for {cfg.resume_timeout:g}s")
                return
            try:
                with trio.fail_after(remaining):
                    link = await self._connector.get_link()
            except Exception as e:  # any connect failure: DNS, refused, TLS, identity, timeout
                delay = backoff.next()
                # (the route logs the outage once: common.link.route_health)
                log.debug("stream %s: no path (%s), retrying in %.2fs", self.short_id, e, delay)
                await trio.sleep(delay)
                continue
            att = self._send_open(link)
            if att is None:
                await trio.sleep(backoff.next())
                continue
            attached_before = self.attachments
            await self._transmit(att)
            if self.attachments == attached_before and not self.machine.ended:
                # refused or lost before the acceptor answered: back off
                await trio.sleep(backoff.next())
            else:
                backoff.reset()
                lost_at = trio.current_time()

    async def _run_acceptor(self) -> None:
        timeout = self.config.resume_timeout
        while not self.machine.ended:
            att = self._att
            if att is None or not att.current:
                with trio.move_on_after(timeout):
                    while (self._att is None or not self._att.current) and not self.machine.ended:
                        await self._wait()
                    continue
                self._fail(ErrorCode.TIMEOUT, f"peer did not resume within {timeout:g}s")
                return
            await self._transmit(att)

    async def _transmit(self, att: Attachment) -> None:
        """Watch over ``att`` until it is detached or the session ends.

        The bytes themselves move in the link writer's round-robin turns
        (``_produce``); this task finishes the stream when it is complete.
        """
        link = att.link
        s, m = self.session, self.machine
        self._kick_send()
        while att.current and not m.ended:
            end = m.completion(s.done, s.eof_acked)
            if end is not None:
                self._finish(att, *end)
                return
            if not link.alive:
                # the link is going down; its on_reset for us follows at once
                await link.closed.wait()
                await trio.lowlevel.checkpoint()
                continue
            await self._wait()

    async def _deliver_failure(self) -> None:
        """Opener: make sure the acceptor learns why the stream ended (best effort, bounded)."""
        assert self._failure is not None and self._connector is not None
        code, reason = self._failure.code, self._failure.reason
        cfg = self.config
        with trio.move_on_after(2 * cfg.mux.dead_after + 1):
            link = self._fail_link
            if link is not None and await link.barrier():
                return  # the peer processed our RESET
            backoff = Backoff(cfg.reconnect_min, cfg.reconnect_max)
            while True:
                try:
                    link = await self._connector.get_link()
                    att = Attachment(self, link)
                    att.current = False
                    sid = link.open(
                        att, self.session_id, self.session.recv_offset, self.header, resume=True
                    )
                    link.detach(sid, code, reason)
                    if await link.barrier():
                        return
                except Exception as e:  # any path failure: retry
                    log.debug("stream %s: cannot report failure yet: %s", self.short_id, e)
                await trio.sleep(backoff.next())
