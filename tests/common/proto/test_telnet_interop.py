"""Interop: our Telnet codec + RFC 1143 negotiator against telnetlib3 (an independent
implementation), over real TCP on 127.0.0.1, in both roles.

telnetlib3 is asyncio; it runs in its own event loop in a thread. Our side is a small
trio adapter built here from ``common.proto.telnet.codec`` and ``common.proto.telnet.options``.
Binary data including 0xFF, NUL, CR, CR-NUL, CR-LF and 0x11 must pass both ways
byte-exact once BINARY is negotiated.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio

from common.proto.telnet import codec
from common.proto.telnet.codec import BINARY, SGA, Data, Negotiate, TelnetParser
from common.proto.telnet.options import OptionNegotiator

telnetlib3 = pytest.importorskip("telnetlib3")

PAYLOAD = (
    bytes(range(256)) * 4
    + b"\r\n\r\x00\r\xff\xff\x11\x13\x00\x00\xff\r"
    + random.Random(7).randbytes(64 * 1024)
)


class TrioTelnet:
    """Minimal trio Telnet endpoint: codec + negotiator over a trio stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = TelnetParser()
        self.neg = OptionNegotiator(accept_local={BINARY, SGA}, accept_remote={BINARY, SGA})
        self.received = bytearray()
        self.other_events: list[object] = []
        self._changed = trio.Event()
        self.closed = False
        self.echo = False
        self._send_lock = trio.Lock()

    async def _send_raw(self, wire: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(wire)

    async def start(self) -> None:
        n = self.neg
        await self._send_raw(n.request_local(BINARY, True) + n.request_remote(BINARY, True))

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        try:
            while True:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    break
                out = []
                for ev in self.parser.feed(bytes(chunk)):
                    if isinstance(ev, Negotiate):
                        reply, _ = self.neg.receive(ev)
                        out.append(reply)
                    elif isinstance(ev, Data):
                        self.received += ev.data
                        if self.echo:
                            out.append(codec.escape(ev.data))
                    else:
                        self.other_events.append(ev)
                if any(out):
                    await self._send_raw(b"".join(out))
                self._poke()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed = True
            self._poke()

    @property
    def binary(self) -> bool:
        return self.neg.is_enabled_local(BINARY) and self.neg.is_enabled_remote(BINARY)

    async def wait_until(self, cond: Callable[[], bool]) -> None:
        while not cond():
            if self.closed:
                raise AssertionError("connection closed while waiting")
            await self._changed.wait()

    async def send(self, data: bytes) -> None:
        for i in range(0, len(data), 4096):  # chunks: let negotiation replies interleave
            await self._send_raw(codec.escape(data[i : i + 4096]))


@contextmanager
def asyncio_thread(
    main: Callable[[concurrent.futures.Future[Any], asyncio.Event], Awaitable[None]],
) -> Iterator[tuple[concurrent.futures.Future[Any], Callable[[], None]]]:
    """Run ``main(ready_future, stop_event)`` in an asyncio loop in a thread."""
    ready: concurrent.futures.Future[Any] = concurrent.futures.Future()
    holder: dict[str, Any] = {}

    async def runner() -> None:
        stop = asyncio.Event()
        holder["loop"] = asyncio.get_running_loop()
        holder["stop"] = stop
        try:
            await main(ready, stop)
        except BaseException as e:
            if not ready.done():
                ready.set_exception(e)
            raise

    t = threading.Thread(target=asyncio.run, args=(runner(),), daemon=True)
    t.start()

    def stop() -> None:
        loop = holder.get("loop")
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(holder["stop"].set)
            except RuntimeError:
                pass

    try:
        yield ready, stop
    finally:
        stop()
        t.join(10)


async def _result(fut: concurrent.futures.Future[Any], timeout: float = 15) -> Any:
    return await trio.to_thread.run_sync(fut.result, timeout)


async def test_our_client_against_telnetlib3_server() -> None:
    server_got: concurrent.futures.Future[tuple[bytes, bool, bool]] = concurrent.futures.Future()

    async def shell(reader: Any, writer: Any) -> None:
        got = b""
        while len(got) < len(PAYLOAD):
            chunk = await reader.read(65536)
            if not chunk:
                break
            got += chunk
            writer.write(chunk)  # echo
        await writer.drain()
        server_got.set_result((got, writer.inbinary, writer.outbinary))

    async def main(ready: concurrent.futures.Future[Any], stop: asyncio.Event) -> None:
        srv = await telnetlib3.create_server(
            "127.0.0.1", 0, shell=shell, encoding=False, connect_maxwait=2.0
        )
        ready.set_result(srv.sockets[0].getsockname()[1])
        await stop.wait()
        srv.close()

    with trio.fail_after(30), asyncio_thread(main) as (ready, _stop):
        port = await _result(ready)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        t = TrioTelnet(stream)
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(t.run)
            await t.start()
            await t.wait_until(lambda: t.binary)
            await t.send(PAYLOAD)
            await t.wait_until(lambda: len(t.received) >= len(PAYLOAD))
            got, inbinary, outbinary = await _result(server_got)
            nursery.cancel_scope.cancel()
    assert inbinary and outbinary
    assert got == PAYLOAD  # our encoder -> telnetlib3's decoder
    assert bytes(t.received) == PAYLOAD  # telnetlib3's encoder -> our parser
    assert not any(isinstance(e, codec.ProtocolError) for e in t.other_events)


async def test_telnetlib3_client_against_our_server() -> None:
    client_done: concurrent.futures.Future[tuple[bytes, bool, bool]] = concurrent.futures.Future()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    server_side: list[TrioTelnet] = []

    async def handler(stream: trio.SocketStream) -> None:
        t = TrioTelnet(stream)
        t.echo = True
        server_side.append(t)
        async with stream, trio.open_nursery() as n:
            n.start_soon(t.run)
            await t.start()

    async def main(ready: concurrent.futures.Future[Any], stop: asyncio.Event) -> None:
        async def shell(reader: Any, writer: Any) -> None:
            inb, outb = writer.inbinary, writer.outbinary
            writer.write(PAYLOAD)
            got = b""
            while len(got) < len(PAYLOAD):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += chunk
            client_done.set_result((got, inb, outb))
            writer.close()

        ready.set_result(None)
        _reader, writer = await telnetlib3.open_connection(
            "127.0.0.1",
            port,
            encoding=False,
            shell=shell,
            connect_minwait=0.05,
            connect_maxwait=2.0,
        )
        await asyncio.wait(
            [
                asyncio.ensure_future(writer.protocol.waiter_closed),
                asyncio.ensure_future(stop.wait()),
            ],
            return_when=asyncio.FIRST_COMPLETED,
        )

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, listeners)
            with asyncio_thread(main) as (ready, _stop):
                await _result(ready)
                got, inbinary, outbinary = await _result(client_done)
            nursery.cancel_scope.cancel()
    assert inbinary and outbinary
    (srv,) = server_side
    assert srv.binary
    assert bytes(srv.received) == PAYLOAD  # telnetlib3's encoder -> our parser
    assert got == PAYLOAD  # our encoder -> telnetlib3's decoder
