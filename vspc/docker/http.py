"""HTTP/1.1 for the Docker endpoint: h11 (sans-IO) driven over one trio stream.

``HttpConnection(stream, handler, limits).serve()`` reads requests one after
another (keep-alive), hands each to ``handler(request, responder)`` and
closes the stream when the client does, when a request breaks HTTP, or after
a response that cannot be followed by another. The handler answers through
the ``Responder``:

* ``send(status, body, content_type)``: a whole response (``send_json``,
  ``send_error`` in docker's ``{"message": ...}`` shape);
* ``start(status, content_type)``, ``write(data)``, ``end()``: a streamed
  response (chunked for HTTP/1.1, h11 picks);
* ``until_gone(fn)``: run ``fn`` until it returns or the client hangs up
  (``docker logs -f``, ``docker wait``: nothing else notices a client that
  left while nothing is written); the connection closes after that response;
* ``hijack(content_type)``: docker's connection hijack (attach, exec start):
  ``101 Switching Protocols`` with ``Upgrade: tcp`` when the client asked for
  an upgrade, else ``200`` and the raw stream after the headers (docker's
  older clients); gives the stream and the bytes already read past the
  request. The handler then owns the stream.

Bounds per connection: request line and headers ``max_header_bytes`` (431
beyond), a body ``max_body_bytes`` (413), ``request_timeout`` seconds to send a
whole request head (then the connection closes; an idle keep-alive one
quietly); past the server's ``max-clients``, a connection waiting for a
request head can be ``evict``-ed (closed) to make room, the longest waiting
first. A body the handler did not read (an unsupported verb: ``docker
build``'s context) is read and dropped, at most ``drain_bytes`` within
``drain_seconds``, so the client sees the answer (past those bounds the
connection closes). A malformed request gets docker's error JSON with h11's
status hint and the connection closes; it costs one log line (wire text
escaped) and ``vspc_protocol_errors_total{where="docker"}``. A response that
fails after it started is cut (the connection closes), never ended as whole.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import trio

from common.ops.wiretext import wire
from vspc.core.docker_api import API_VERSION, error_body

log = logging.getLogger("vspc.docker")

RECV = 65536
SERVER = "vic-channel"
SHOWN_BYTES = 160  # of a bad request, in its log line


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 65536
    max_body_bytes: int = 1 << 20
    request_timeout: float = 30.0
    drain_bytes: int = 64 << 20
    drain_seconds: float = 5.0


class BodyTooLarge(Exception):
    """A request body the endpoint will not read: over ``max_body_bytes`` (413), or
    (the subclasses) not sent within ``request_timeout`` (408), or cut by the client
    (400). Handlers pass it on; the connection answers ``status`` and closes."""

    status = 413


class BodyTimeout(BodyTooLarge):
    status = 408


class BodyCut(BodyTooLarge):
    status = 400


class Request:
    def __init__(self, http: HttpConnection, ev: h11.Request) -> None:
        self._http = http
        self.method = ev.method.decode("ascii", "replace")
        self.target = ev.target.decode("latin-1")
        self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ev.headers]
        self.body_done = False

    def header(self, name: str) -> str:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), "")

    async def body(self) -> bytes:
        """The whole body (``BodyTooLarge`` past ``max_body_bytes``, ``BodyTimeout``
        unless it all comes within ``request_timeout``, ``BodyCut``)."""
        out = bytearray()
        limits = self._http.limits
        with trio.move_on_after(limits.request_timeout):
            while True:
                try:
                    ev = await self._http.next_event()
                except h11.RemoteProtocolError as e:  # a bad chunk, an early close
                    raise BodyCut(_reason_of(e)[0]) from None
                if isinstance(ev, h11.Data):
                    out += ev.data
                    if len(out) > limits.max_body_bytes:
                        raise BodyTooLarge(f"request body over {limits.max_body_bytes}")
                elif isinstance(ev, h11.EndOfMessage):
                    self.body_done = True
                    return bytes(out)
                else:
                    raise BodyCut("connection closed inside a request body")
        raise BodyTimeout("no whole request body within the request timeout")


class Responder:
    def __init__(self, http: HttpConnection, method: str) -> None:
        self._http = http
        self.method = method
        self.status = 0  # sent, once started
        self.started = False
        self.done = False
        self.hijacked = False
        self.broken = False  # the handler failed after starting: close, do not end

    def _headers(self, content_type: str, extra: Iterable[tuple[str, str]]) -> list[Any]:
        hs = [("Server", SERVER), ("Api-Version", API_VERSION), ("Ostype", "linux")]
        if content_type:
            hs.append(("Content-Type", content_type))
        hs.extend(extra)
        if self._http.close_after:
            hs.append(("Connection", "close"))
        return hs

    async def send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        hs = [*self._headers(content_type, headers), ("Content-Length", str(len(body)))]
        await self._http.send(h11.Response(status_code=status, headers=hs, reason=_reason(status)))
        self.started, self.status = True, status
        if body and self.method != "HEAD":
            await self._http.send(h11.Data(data=body))
        await self.end()

    async def send_json(self, status: int, obj: object) -> None:
        await self.send(status, json.dumps(obj).encode() + b"\n", "application/json")

    async def send_error(self, status: int, message: str) -> None:
        await self.send(status, error_body(message) + b"\n", "application/json")

    async def start(
        self, status: int, content_type: str, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        hs = self._headers(content_type, headers)
        await self._http.send(h11.Response(status_code=status, headers=hs, reason=_reason(status)))
        self.started, self.status = True, status

    async def write(self, data: bytes) -> None:
        if data:
            await self._http.send(h11.Data(data=data))

    async def end(self) -> None:
        if not self.done:
            self.done = True
            await self._http.send(h11.EndOfMessage())

    async def until_gone(self, fn: Callable[[], Awaitable[None]]) -> bool:
        """Run ``fn``; cancel it if the client hangs up. False: it did."""
        return await self._http.until_gone(fn)

    async def hijack(self, content_type: str) -> tuple[trio.abc.Stream, bytes]:
        """See the module doc."""
        http = self._http
        hs = [("Content-Type", content_type), ("Api-Version", API_VERSION)]
        if http.conn.their_state is h11.MIGHT_SWITCH_PROTOCOL:  # type: ignore[attr-defined]
            hs += [("Connection", "Upgrade"), ("Upgrade", "tcp")]
            await http.send(
                h11.InformationalResponse(status_code=101, headers=hs, reason=_reason(101))
            )
        else:
            head = b"HTTP/1.1 200 OK\r\n" + b"".join(
                b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in hs
            )
            await http.stream.send_all(head + b"\r\n")
        self.started = self.done = self.hijacked = True
        self.status = 101
        leftover, _closed = http.conn.trailing_data
        return http.stream, bytes(leftover)


Handler = Callable[[Request, Responder], Awaitable[None]]


class HttpConnection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: Handler,
        limits: Limits,
        *,
        peer: str = "",
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.limits = limits
        self.peer = peer
        self.on_error = on_error
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.close_after = False  # the current response ends the connection
        self._gone = False
        self._recent = b""  # the start of the last bytes received (for a log line)
        self.waiting_since: float | None = None  # trio time it began to wait for a request
        self.evicted = False
        self._head_scope: trio.CancelScope | None = None

    def evict(self) -> None:
        """Close the connection if it is waiting for a request head (to make room for
        a new client: it holds nothing else)."""
        if self._head_scope is not None:
            self.evicted = True
            self._head_scope.cancel()

    async def next_event(self) -> Any:
        while True:
            ev = self.conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            if self._gone:
                self.conn.receive_data(b"")
                continue
            data = await self.stream.receive_some(RECV)
            if data:
                self._recent = bytes(data[:SHOWN_BYTES])
            self.conn.receive_data(bytes(data))

    async def send(self, ev: Any) -> None:
        data = self.conn.send(ev)
        if data:
            await self.stream.send_all(data)

    async def serve(self) -> None:
        try:
            await self._serve()
        except h11.RemoteProtocolError as e:
            why, quoted = _reason_of(e)
            await self._bad_request(e.error_status_hint, why, quoted)
        except BodyTooLarge as e:
            await self._bad_request(e.status, str(e))
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass  # the client left (or the response could not be finished): nothing to say
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _serve(self) -> None:
        while True:
            with trio.move_on_after(self.limits.request_timeout) as cs:
                self._head_scope, self.waiting_since = cs, trio.current_time()
                try:
                    ev = await self.next_event()
                finally:
                    self._head_scope = self.waiting_since = None
            if self.evicted:
                log.info("docker endpoint: %s: closed to make room", wire(self.peer))
                return
            if cs.cancelled_caught:
                if self.conn.their_state is not h11.IDLE or self.conn.trailing_data[0]:
                    self._log_bad("no whole request within the request timeout")
                return  # else an idle keep-alive connection: closed quietly
            if not isinstance(ev, h11.Request):
                return  # ConnectionClosed
            self.close_after = _wants_close(ev)
            req, resp = Request(self, ev), Responder(self, req_method(ev))
            await self.handler(req, resp)
            if resp.hijacked or resp.broken:
                return  # a response that failed midway is cut, never ended as if whole
            if not resp.started:
                await resp.send_error(500, "the endpoint gave no answer")
            await resp.end()
            if self._gone or self.close_after:
                return
            if not self._body_read() and not await self._drain():
                return
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    def _body_read(self) -> bool:
        """The request's body, if any, is read (what h11 holds of it is dropped)."""
        while self.conn.their_state is h11.SEND_BODY:
            if self.conn.next_event() is h11.NEED_DATA:
                return False
        return True

    async def until_gone(self, fn: Callable[[], Awaitable[None]]) -> bool:
        async def watch(cancel: trio.CancelScope) -> None:
            try:
                data = await self.stream.receive_some(RECV)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if data:  # not a hang-up: wait for the response to end
                await trio.sleep_forever()
            self._gone = True
            cancel.cancel()

        self.close_after = True  # whatever the client sends meanwhile is not read as HTTP
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            await fn()
            nursery.cancel_scope.cancel()
        return not self._gone

    async def _drain(self) -> bool:
        """Read and drop the rest of a body the handler did not want (bounded);
        True when it all came."""
        left = self.limits.drain_bytes
        with trio.move_on_after(self.limits.drain_seconds):
            while self.conn.their_state is h11.SEND_BODY and left > 0:
                if self.conn.next_event() is h11.NEED_DATA:
                    data = await self.stream.receive_some(RECV)
                    if not data:
                        return False
                    left -= len(data)
                    self.conn.receive_data(bytes(data))
        return self.conn.their_state is not h11.SEND_BODY

    async def _bad_request(self, status: int, why: str, sent: bytes | None = None) -> None:
        self._log_bad(why, sent)
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.close_after = True
            resp = Responder(self, "GET")
            try:
                await resp.send_error(status, f"bad request: {why}")
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
                pass

    def _log_bad(self, why: str, sent: bytes | None = None) -> None:
        """One line: the peer, why, and what it sent (the line h11 quoted, else the
        start of the last bytes received), escaped."""
        shown = self._recent if sent is None else sent
        log.warning(
            "docker endpoint: %s: %s; it sent: %s",
            wire(self.peer),
            wire(why, 200),
            wire(shown, SHOWN_BYTES),
        )
        self.on_error()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _reason_of(e: h11.RemoteProtocolError) -> tuple[str, bytes | None]:
    """h11's message without the bytes it quotes (``bytearray(b'...')``, a Python
    literal), and those bytes: the log line shows them escaped once."""
    msg = str(e)
    reason, sep, quoted = msg.partition(": bytearray(")
    if sep and quoted.endswith(")"):
        try:
            value = ast.literal_eval(quoted[:-1])
        except (ValueError, SyntaxError):
            return msg, None
        if isinstance(value, bytes):
            return reason, value
    return msg, None


def req_method(ev: h11.Request) -> str:
    return ev.method.decode("ascii", "replace")


def _wants_close(ev: h11.Request) -> bool:
    return any(k == b"connection" and b"close" in v.lower() for k, v in ev.headers)
