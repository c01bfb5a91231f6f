"""``PeerLink``: the trio adapter that runs a ``common.proto.link.connection.LinkConnection``
over one stream.

One reader task feeds received bytes to the connection, which routes the events
to per-stream handlers (synchronously: handlers never block, they buffer within
the stream's credit window; see ``common.link.linkreader``); one writer task
sends what the connection queued, coalescing small frames; one keepalive task
pings and declares the link dead when the peer falls silent. Senders wait on
credit and on the writer's high-water mark, so memory is bounded on both sides.

A malformed frame or a silent peer kills *this* link (one log line); every
stream handler is told ``on_link_lost`` and the resumable streams above move to
another link. Nothing else in the process is affected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from common.io.fastsock import IOV_MAX, FastSocket, Yielder, consume, fast_socket, unthrottle_tcp
from common.io.tlsstream import TlsStream
from common.link.linkapi import LinkConfig, LinkDeadError, StreamHandler
from common.link.linkreader import LinkReceiver, socket_of
from common.ops.wiretext import wire
from common.proto.link.connection import LinkConnection
from common.proto.link.frames import ErrorCode, LinkProtocolError
from common.proto.link.mux import LinkClosingError, StreamOpened

log = logging.getLogger("relay.link")

__all__ = ["LinkClosingError", "LinkConfig", "LinkDeadError", "PeerLink", "StreamHandler"]


OpenCallback = Callable[["PeerLink", StreamOpened], None]


class PeerLink(LinkReceiver):
    """A multiplexed peer link over ``transport``; call ``run()`` in a nursery."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        *,
        client: bool,
        config: LinkConfig | None = None,
        on_open: OpenCallback | None = None,
        name: str = "",
        peer_identity: str = "",
        on_rtt: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config or LinkConfig()
        self.on_rtt = on_rtt  # each keepalive's round trip, for a metric
        self.cut = False  # it died while working, without GOAWAY (see _lost)
        self.error: BaseException | None = None  # what killed it, if anything did
        self.transport = transport
        self.name = name or ("client" if client else "server")
        self.peer_identity = peer_identity
        self.conn = LinkConnection(
            self.config.mux,
            client=client,
            now=trio.current_time(),
            on_open=None if on_open is None else lambda ev: on_open(self, ev),
        )
        self._out_wake = trio.Event()
        self._write_lot = trio.lowlevel.ParkingLot()  # senders waiting for the writer, FIFO
        self._ready = trio.Event()
        self._inflight = 0
        self._ack_wake = trio.Event()
        self._cancel: trio.CancelScope | None = None
        self.closed = trio.Event()
        self.dead_reason: str | None = None
        self._pong = trio.Event()
        self.bytes_in = 0
        self.bytes_out = 0
        sock = socket_of(transport)
        if sock is not None:
            unthrottle_tcp(sock)  # the writer sends large batches
        self._raw: FastSocket | None = None
        if isinstance(transport, trio.SocketStream):
            self._raw = fast_socket(transport.socket)

    # ---------------------------------------------------------------- public state
    @property
    def alive(self) -> bool:
        return not self.closed.is_set() and self.dead_reason is None

    @property
    def draining(self) -> bool:
        return self.conn.draining

    @property
    def stream_count(self) -> int:
        return len(self.conn.handlers)

    @property
    def rtt(self) -> float | None:
        return self.conn.rtt

    def __repr__(self) -> str:
        return (
            f"<PeerLink {self.name} peer={self.peer_identity or '-'} "
            f"streams={len(self.conn.handlers)}>"
        )

    # ---------------------------------------------------------------- streams
    def open(
        self,
        handler: StreamHandler,
        session_id: bytes,
        recv_offset: int,
        header: bytes,
        resume: bool,
        continues: int | None = None,
    ) -> int:
        """Open a stream; raises LinkDeadError or LinkClosingError."""
        if not self.alive:
            raise LinkDeadError(self.dead_reason or "link closed")
        sid = self.conn.open(handler, session_id, recv_offset, header, resume, continues)
        self._kick()
        return sid

    def attach(self, sid: int, handler: StreamHandler) -> None:
        """Take over an incoming stream (from the on_open callback).

        Registered even if the mux already dropped the stream: a RESET that arrived
        in the same read as the OPEN is routed right after, to this handler.
        """
        self.conn.attach(sid, handler)

    def detach(self, sid: int, code: int = ErrorCode.SUPERSEDED, reason: str = "") -> None:
        """Stop handling ``sid``: RESET it (CLOSE when code is NO_ERROR) and forget it."""
        alive = self.alive
        self.conn.detach(sid, code, reason, send=alive)
        if alive:
            self._kick()

    def want_send(self, sid: int) -> None:
        """``sid`` has data (or EOF) to send: queue it for a writer turn."""
        if self.conn.want_send(sid):
            self._kick()

    def send_credit(self, sid: int) -> int:
        return self.conn.send_credit(sid)

    def writable(self) -> bool:
        return self.conn.pending_output + self._inflight < self.config.write_high_water

    async def wait_writable(self) -> None:
        """Until the writer has room (FIFO among waiting streams: fair turns)."""
        await trio.lowlevel.checkpoint()
        while self.alive and not self.writable():
            await self._write_lot.park()

    def send_data(self, sid: int, offset: int, payload: bytes | bytearray | memoryview) -> int:
        n = self.conn.send_data(sid, offset, payload)
        if n:
            self._kick()
        return n

    def send_ack(self, sid: int, offset: int, fin: bool = False) -> None:
        self.conn.send_ack(sid, offset, fin)
        self._kick()

    def send_eof(self, sid: int, offset: int) -> None:
        self.conn.send_eof(sid, offset)
        self._kick()

    def consumed(self, sid: int, n: int) -> None:
        if self.alive and self.conn.consumed(sid, n):
            self._kick()

    # ---------------------------------------------------------------- lifecycle
    async def wait_ready(self) -> None:
        """Until the peer's HELLO arrived (raises LinkDeadError if the link dies first)."""
        async with trio.open_nursery() as n:

            async def dead() -> None:
                await self.closed.wait()
                n.cancel_scope.cancel()

            n.start_soon(dead)
            await self._ready.wait()
            n.cancel_scope.cancel()
        if not self._ready.is_set():
            raise LinkDeadError(self.dead_reason or "link closed before HELLO")

    async def barrier(self) -> bool:
        """True once the peer has processed everything queued so far; False if the link dies."""
        if not self.alive:
            return False
        seq = self.conn.ping(trio.current_time())
        self._kick()
        while self.conn.pong_seq < seq:
            if not self.alive:
                return False
            ev = self._pong
            async with trio.open_nursery() as n:

                async def dead() -> None:
                    await self.closed.wait()
                    n.cancel_scope.cancel()

                n.start_soon(dead)
                await ev.wait()
                n.cancel_scope.cancel()
        return True

    def goaway(self, reason: str = "draining") -> None:
        if self.alive:
            self.conn.goaway(reason)
            self._kick()

    def close(self, reason: str = "closed") -> None:
        """Kill the link now (handlers see on_link_lost via on_reset)."""
        if self.dead_reason is None:
            self.dead_reason = reason
        if self._cancel is not None:
            self._cancel.cancel()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until the link dies; never raises for link-level failures."""
        try:
            with trio.CancelScope() as scope:
                self._cancel = scope
                task_status.started()
                async with trio.open_nursery() as n:
                    n.start_soon(self._guard, self._writer)
                    n.start_soon(self._guard, self._keepalive)
                    n.start_soon(self._guard, self._acker)
                    await self._guard(self._reader)
        finally:
            if self.dead_reason is None:
                self.dead_reason = "closed"
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.transport)
            self.closed.set()
            self._ready.set()
            self._write_lot.unpark_all()
            for h in self.conn.take_handlers().values():
                try:
                    h.on_reset(ErrorCode.INTERNAL, f"link lost: {self.dead_reason}")
                except Exception:  # a broken handler must not hide the others
                    log.exception("stream handler failed on link loss")

    # ---------------------------------------------------------------- tasks
    async def _guard(self, fn: Callable[[], Any]) -> None:
        """Run one link task; a link-level failure records why and stops the link."""
        try:
            await fn()
        except LinkProtocolError as e:
            reason = f"protocol error: {e}"
            log.warning(
                "link %s (%s): closing: %s",
                self.name,
                wire(self.peer_identity or "-"),
                wire(reason),
            )
            self._lost(e)
        except LinkDeadError as e:
            reason = str(e)
            log.info("link %s (%s): %s", self.name, self.peer_identity or "-", reason)
            self._lost(e)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            reason = f"transport failed: {e!r}"
            log.info("link %s (%s): %s", self.name, self.peer_identity or "-", reason)
            self._lost(e)
        else:
            reason = "closed"
        self.close(reason)

    def _lost(self, e: BaseException) -> None:
        """The link failed: a cut if it was working (HELLO seen), nobody had closed
        it on purpose and no GOAWAY announced its end."""
        if self.error is None:
            self.error = e
        if self.dead_reason is None and self._ready.is_set() and not self.draining:
            self.cut = True

    def _kick(self) -> None:
        self._out_wake.set()

    async def _writer(self) -> None:
        conn = self.conn
        hw = self.config.write_high_water
        quantum = self.config.send_quantum
        yielder = Yielder(budget=hw)
        while True:
            if not conn.has_turns and not conn.pending_output:
                await self._out_wake.wait()
                self._out_wake = trio.Event()
                yielder.reset()
            conn.fill_turns(hw, quantum)
            chunks = conn.data_to_send()
            if not chunks:
                # the turns produced nothing (no credit): they left the round robin and
                # the next kick brings them back; yield only if turns were added meanwhile
                if conn.has_turns:
                    await trio.lowlevel.checkpoint()
                continue
            sent = self._inflight = sum(len(c) for c in chunks)
            await self._send_parts(chunks)
            self.bytes_out += sent
            self._inflight = 0
            if self._write_lot:
                room = hw - conn.pending_output
                self._write_lot.unpark(count=max(1, room // self.config.mux.max_payload))
            await yielder.maybe(sent)

    async def _send_parts(self, chunks: list[bytes | bytearray | memoryview]) -> None:
        """Send frames without joining them where the transport allows (no extra copy)."""
        t = self.transport
        if isinstance(t, TlsStream):
            await t.send_parts(chunks)
        elif self._raw is not None:
            await self._raw.send_parts(chunks)
        elif isinstance(t, trio.SocketStream) and len(chunks) > 1:
            sock = t.socket
            views = [memoryview(c) for c in chunks]
            while views:
                consume(views, await sock.sendmsg(views[:IOV_MAX]))
        else:
            await t.send_all(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    async def _keepalive(self) -> None:
        cfg = self.config.mux
        while True:
            await trio.sleep(min(cfg.ping_interval, cfg.dead_after) / 2)
            failed = self.conn.tick(trio.current_time())
            if failed is not None:
                raise LinkDeadError(failed.reason)
            self._kick()
