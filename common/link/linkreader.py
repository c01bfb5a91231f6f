"""The peer link's receiving side (part of ``common.link.peerlink.PeerLink``).

The reader task receives from the transport and feeds the bytes to the link's
``LinkConnection`` (the bulk of a large DATA payload straight into the payload's
own buffer), which routes the stream events to their handlers; the reader
carries out the link's actions (GOAWAY, PONG, a failure). The per-batch work of
the streams that received (ACKs) is done every ``ack_bytes``, at once after an
EOF, or by the acker task shortly after the input ran dry.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from common.io.fastsock import FastSocket, Yielder
from common.io.pipepool import Pipe
from common.io.tlsstream import TlsStream
from common.link import direct
from common.link.linkapi import LinkConfig, LinkDeadError
from common.ops.wiretext import wire
from common.proto.link.connection import Action, LinkConnection, LinkFailed
from common.proto.link.frames import HEADER_SIZE, LinkProtocolError
from common.proto.link.mux import PongReceived

log = logging.getLogger("relay.link")

SMALL_READ = 32 * 1024

RecvInto = Callable[[memoryview], Awaitable[int]]

DIRECT = True  # plaintext links splice payloads straight out where their stream lets them


class DirectStream(Protocol):
    """A stream (``handler.stream``) that takes payloads straight from the link's socket
    (common.link.resumable.ResumableStream; see common.link.direct)."""

    def direct_ready(self, att: object, offset: int) -> bool: ...
    def take_passed(self, att: object, offset: int, pipe: Pipe, n: int) -> None: ...


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


def _direct_stream(handler: object) -> DirectStream | None:
    """The handler's stream if it takes payloads straight (duck-typed: an isinstance
    check against a runtime Protocol costs more than the rest of a payload's work)."""
    stream = getattr(handler, "stream", None)
    return stream if hasattr(stream, "take_passed") else None


class LinkReceiver:
    """The reader, actions and ACK batching of ``PeerLink`` (which sets these)."""

    config: LinkConfig
    transport: trio.abc.Stream
    conn: LinkConnection
    name: str
    bytes_in: int
    _raw: FastSocket | None
    _ready: trio.Event
    _ack_wake: trio.Event
    _pong: trio.Event
    on_rtt: Callable[[float], None] | None

    def _kick(self) -> None:
        raise NotImplementedError

    def _reader(self) -> Awaitable[None]:
        """The reader task (its loop for this transport, awaited by the caller)."""
        t = self.transport
        if isinstance(t, TlsStream):
            return self._read_into(t.recv_into)  # (the loop yields: Yielder)
        if self._raw is not None:
            return self._read_into(self._raw.recv_into, socket_of(t))
        if isinstance(t, trio.SocketStream):
            return self._read_into(t.socket.recv_into, t.socket)
        return self._read_some()

    async def _read_into(
        self, recv_into: RecvInto, sock: trio.socket.SocketType | None = None
    ) -> None:
        # One receive buffer for the life of the link (the decoder copies out what it
        # keeps); the bulk of a large DATA payload is received straight into the
        # payload's own buffer instead (no copy at all), or (a plaintext link's
        # ``sock``) spliced straight to where its stream's bytes go (common.link.direct).
        rmv = memoryview(bytearray(self.config.read_size))
        # after a payload received in place, read little: the next frame's header and
        # the start of its payload (copied), so that most of it goes in place too (if
        # payloads may pass: only the next header, so that all of the next may pass)
        small = rmv[: min(len(rmv), SMALL_READ)]
        pipe = direct.new_pipe() if sock is not None and DIRECT else None
        if pipe is not None:
            small = rmv[: HEADER_SIZE + 8]
        conn = self.conn
        yielder = Yielder()
        more_input = input_probe(self.transport)
        touched_bytes = 0
        in_place = False
        try:
            while True:
                if pipe is not None and sock is not None and (n := await self._pass(sock, pipe)):
                    touched_bytes = self._received(n, (), touched_bytes, more_input)
                    in_place = True
                    await yielder.maybe(n)
                    continue
                target = conn.receive_buffer()
                if target is not None:
                    n = await recv_into(target)
                    if not n:
                        raise LinkDeadError("peer closed the link")
                    actions = conn.received_in_place(n, trio.current_time())
                    in_place = True
                else:
                    buf = small if in_place else rmv
                    n = await recv_into(buf)
                    if not n:
                        raise LinkDeadError("peer closed the link")
                    actions = conn.receive_data(buf[:n], trio.current_time())
                    in_place = False
                touched_bytes = self._received(n, actions, touched_bytes, more_input)
                await yielder.maybe(n)
        finally:
            if pipe is not None:
                pipe.close()

    async def _pass(self, sock: trio.socket.SocketType, pipe: Pipe) -> int:
        """Move (part of) a large DATA payload straight to its stream's destination
        if its stream may take it so; returns the bytes taken (0: receive as usual)."""
        conn = self.conn
        target = conn.pass_target()
        if target is None:
            return 0
        h, offset, left, must = target
        stream = _direct_stream(h)
        if not must and not (stream is not None and stream.direct_ready(h, offset)):
            return 0
        while True:
            try:
                n = direct.splice_in(sock.fileno(), pipe, left)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
        if not n:
            raise LinkDeadError("peer closed the link")
        h = conn.passed(n, trio.current_time())
        stream = _direct_stream(h)
        if stream is not None:
            stream.take_passed(h, offset, pipe, n)
        else:
            direct.drain(pipe, n)  # (its stream went away meanwhile: dropped)
        if conn.pending_output:
            self._kick()
        return n

    async def _read_some(self) -> None:
        t = self.transport
        size = self.config.read_size
        conn = self.conn
        yielder = Yielder()
        more_input = input_probe(t)
        touched_bytes = 0
        while True:
            data = await t.receive_some(size)
            n = len(data)
            if not n:
                raise LinkDeadError("peer closed the link")
            actions = conn.receive_data(data, trio.current_time())
            touched_bytes = self._received(n, actions, touched_bytes, more_input)
            await yielder.maybe(n)

    def _received(
        self,
        n: int,
        actions: Sequence[Action],
        touched_bytes: int,
        more_input: Callable[[], bool],
    ) -> int:
        """Carry out the actions of ``n`` bytes received; returns the bytes received
        by touched streams since their last batch end."""
        for action in actions:  # first: a failure stops here, as if never received
            self._carry_out(action)
        self.bytes_in += n
        conn = self.conn
        if not self._ready.is_set() and conn.ready:
            self._ready.set()
        if conn.touched:
            # Per-batch work (ACKs): every ack_bytes while bytes keep coming, at
            # once after an EOF, else shortly after the input ran dry (delayed
            # ACK: a sender that keeps sending gets one ACK per ack_bytes).
            touched_bytes += n
            if touched_bytes >= self.config.ack_bytes or conn.eof_seen:
                touched_bytes = 0
                self._batch_end()
            elif not more_input():
                touched_bytes = 0
                self._ack_wake.set()
        if conn.pending_output:
            self._kick()
        return touched_bytes

    def _batch_end(self) -> None:
        self.conn.batch_end()
        if self.conn.pending_output:
            self._kick()

    async def _acker(self) -> None:
        """Delayed ACKs: the per-batch work of streams that received bytes, once the
        input has been dry for ``ack_delay`` (sooner if the reader does it first)."""
        while True:
            await self._ack_wake.wait()
            self._ack_wake = trio.Event()
            await trio.sleep(self.config.ack_delay)
            if self.conn.touched:
                self._batch_end()

    def _carry_out(self, action: Action) -> None:
        if isinstance(action, PongReceived):
            if self.on_rtt is not None:
                self.on_rtt(action.rtt)
            self._pong.set()
            self._pong = trio.Event()
        elif isinstance(action, LinkFailed):
            raise LinkProtocolError(action.reason, action.code)
        else:
            log.info(
                "link %s: peer sent GOAWAY (last stream %d): %s",
                self.name,
                action.last_stream_id,
                wire(action.reason),
            )
