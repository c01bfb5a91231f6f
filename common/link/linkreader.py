"""The peer link's receiving side (part of ``common.link.peerlink.PeerLink``).

The reader task receives from the transport, feeds the bytes to the mux (the
bulk of a large DATA payload straight into the payload's own buffer) and
dispatches the events to the per-stream handlers, synchronously; the per-batch
work of the streams that received (ACKs) is done every ``ack_bytes``, at once
after an EOF, or by the acker task shortly after the input ran dry.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from common.io.fastsock import FastSocket, Yielder
from common.io.tlsstream import TlsStream
from common.link.linkapi import LinkConfig, LinkDeadError, StreamHandler
from common.ops.wiretext import wire
from common.proto.link.frames import ErrorCode
from common.proto.link.mux import (
    AckReceived,
    CreditAvailable,
    DataReceived,
    EofReceived,
    GoAwayReceived,
    Mux,
    PongReceived,
    StreamOpened,
    StreamReset,
)

log = logging.getLogger("relay.link")

SMALL_READ = 32 * 1024

RecvInto = Callable[[memoryview], Awaitable[int]]


def socket_of(transport: trio.abc.Stream) -> trio.socket.SocketType | None:
    if isinstance(transport, TlsStream):
        transport = transport.transport
    if isinstance(transport, trio.SocketStream):
        return transport.socket
    return None


def input_probe(transport: trio.abc.Stream) -> Callable[[], bool]:
    """A cheap "more bytes are waiting to be read right now" test for ``transport``
    (always False when it cannot tell: per-batch work is then done every read)."""
    sock = socket_of(transport)
    if sock is None:
        return lambda: False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poll = poller.poll
    if isinstance(transport, TlsStream):
        tls = transport
        return lambda: tls.input_pending() or bool(poll(0))
    return lambda: bool(poll(0))


class LinkReceiver:
    """The reader, dispatch and ACK batching of ``PeerLink`` (which sets these)."""

    config: LinkConfig
    transport: trio.abc.Stream
    mux: Mux
    name: str
    rtt: float | None
    bytes_in: int
    _raw: FastSocket | None
    _ready: trio.Event
    _handlers: dict[int, StreamHandler]
    _touched: dict[int, StreamHandler]
    _eof_seen: bool
    _ack_wake: trio.Event
    _on_open: Callable[[Any, StreamOpened], None] | None
    _pong_seq: int
    _pong: trio.Event

    def _kick(self) -> None:
        raise NotImplementedError

    def _reader(self) -> Awaitable[None]:
        """The reader task (its loop for this transport, awaited by the caller)."""
        t = self.transport
        if isinstance(t, TlsStream):
            return self._read_into(t.receive_into)
        if self._raw is not None:
            return self._read_into(self._raw.recv_into)
        if isinstance(t, trio.SocketStream):
            return self._read_into(t.socket.recv_into)
        return self._read_some()

    async def _read_into(self, recv_into: RecvInto) -> None:
        # One receive buffer for the life of the link (the decoder copies out what it
        # keeps); the bulk of a large DATA payload is received straight into the
        # payload's own buffer instead (no copy at all).
        rmv = memoryview(bytearray(self.config.read_size))
        # after a payload received in place, read little: the next frame's header and
        # the start of its payload (copied), so that most of it goes in place too
        small = rmv[: min(len(rmv), SMALL_READ)]
        mux = self.mux
        yielder = Yielder()
        more_input = input_probe(self.transport)
        touched_bytes = 0
        in_place = False
        while True:
            target = mux.receive_buffer()
            if target is not None:
                n = await recv_into(target)
                if not n:
                    raise LinkDeadError("peer closed the link")
                events = mux.received_in_place(n, trio.current_time())
                in_place = True
            else:
                buf = small if in_place else rmv
                n = await recv_into(buf)
                if not n:
                    raise LinkDeadError("peer closed the link")
                events = mux.receive_data(buf[:n], trio.current_time())
                in_place = False
            touched_bytes = self._received(n, events, touched_bytes, more_input)
            await yielder.maybe(n)

    async def _read_some(self) -> None:
        t = self.transport
        size = self.config.read_size
        mux = self.mux
        yielder = Yielder()
        more_input = input_probe(t)
        touched_bytes = 0
        while True:
            data = await t.receive_some(size)
            n = len(data)
            if not n:
                raise LinkDeadError("peer closed the link")
            events = mux.receive_data(data, trio.current_time())
            touched_bytes = self._received(n, events, touched_bytes, more_input)
            await yielder.maybe(n)

    def _received(
        self, n: int, events: list[Any], touched_bytes: int, more_input: Callable[[], bool]
    ) -> int:
        """Dispatch the events of ``n`` bytes received; returns the bytes received
        by touched streams since their last batch end."""
        self.bytes_in += n
        if not self._ready.is_set() and self.mux.ready:
            self._ready.set()
        for ev in events:
            self._dispatch(ev)
        if self._touched:
            # Per-batch work (ACKs): every ack_bytes while bytes keep coming, at
            # once after an EOF, else shortly after the input ran dry (delayed
            # ACK: a sender that keeps sending gets one ACK per ack_bytes).
            touched_bytes += n
            if touched_bytes >= self.config.ack_bytes or self._eof_seen:
                touched_bytes = 0
                self._batch_end()
            elif not more_input():
                touched_bytes = 0
                self._ack_wake.set()
        if self.mux.pending_output:
            self._kick()
        return touched_bytes

    def _batch_end(self) -> None:
        self._eof_seen = False
        touched, self._touched = self._touched, {}
        for h in touched.values():
            h.on_batch_end()
        if self.mux.pending_output:
            self._kick()

    async def _acker(self) -> None:
        """Delayed ACKs: the per-batch work of streams that received bytes, once the
        input has been dry for ``ack_delay`` (sooner if the reader does it first)."""
        while True:
            await self._ack_wake.wait()
            self._ack_wake = trio.Event()
            await trio.sleep(self.config.ack_delay)
            if self._touched:
                self._batch_end()

    def _dispatch(self, ev: object) -> None:
        if isinstance(ev, DataReceived):
            h = self._handlers.get(ev.stream_id)
            if h is None:
                self.mux.consumed(ev.stream_id, len(ev.payload))
                return
            h.on_data(ev.offset, ev.payload)
            self._touched[ev.stream_id] = h
        elif isinstance(ev, CreditAvailable):
            h = self._handlers.get(ev.stream_id)
            if h is not None:
                h.on_credit()
        elif isinstance(ev, AckReceived):
            h = self._handlers.get(ev.stream_id)
            if h is not None:
                h.on_ack(ev.offset, ev.fin)
        else:
            self._dispatch_control(ev)

    def _dispatch_control(self, ev: object) -> None:
        if isinstance(ev, EofReceived):
            h = self._handlers.get(ev.stream_id)
            if h is not None:
                h.on_eof(ev.offset)
                self._touched[ev.stream_id] = h
                self._eof_seen = True
        elif isinstance(ev, StreamReset):
            h = self._handlers.pop(ev.stream_id, None)
            self._touched.pop(ev.stream_id, None)
            if h is not None:
                h.on_reset(ev.code, ev.reason)
        elif isinstance(ev, StreamOpened):
            if self._on_open is None:
                self.mux.reset_stream(
                    ev.stream_id, ErrorCode.REFUSED, "this end accepts no streams"
                )
            else:
                self._on_open(self, ev)
        elif isinstance(ev, GoAwayReceived):
            log.info(
                "link %s: peer sent GOAWAY (last stream %d): %s",
                self.name,
                ev.last_stream_id,
                wire(ev.reason),
            )
        elif isinstance(ev, PongReceived):
            self.rtt = ev.rtt
            self._pong_seq = max(self._pong_seq, ev.seq)
            self._pong.set()
            self._pong = trio.Event()
