"""Ingress: where VM-side streams enter the relay.

Each module offers ``async def serve(cfg, sink, *, task_status)`` for its
listener kind. It calls ``sink.dispatch(stream, origin)`` for every stream it
obtains; dispatch admits the stream (returns an Event set when the stream has
been relayed and closed) or refuses it (closes it, logs, counts; returns None).
An ingress that refuses on its own (unknown vsock CID) calls ``sink.refuse``.
Connecting ingresses (pipe connect, tcp client, serial, fifo) wait for that
Event and then reconnect, with ``sink.backoff()`` between failed attempts.
``task_status.started(where)`` reports what was bound (for logs and tests).
"""

from __future__ import annotations

import errno
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

log = logging.getLogger("relay.ingress")


@dataclass(frozen=True, slots=True)
class Origin:
    """Who a stream comes from, as the relay (not the guest) knows it."""

    route: str  # listener name
    kind: str  # common.proto.link.header.INGRESS_KINDS
    vm: str  # VM identity; "" when only the appliance can tell (vSPC Telnet)
    label: str
    peer: str  # peer address, for logs


class IngressSink(Protocol):
    """What the daemon offers its listeners."""

    async def dispatch(
        self, stream: trio.abc.Stream, origin: Origin, track: bool = False
    ) -> trio.Event | None: ...

    async def refuse(self, stream: trio.abc.Stream, origin: Origin, reason: str) -> None: ...

    def backoff(self) -> Backoff: ...


# listen() backlog of ingress sockets: thousands of VMs may connect at once
BACKLOG = 4096
# accept() errors that mean "out of resources for a moment", not "listener broken".
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# accept() errors about one connection that died in the backlog.
_TRANSIENT_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET}


class Backoff:
    """Exponential reconnect backoff with jitter; ``reset()`` after a success."""

    def __init__(self, lo: float, hi: float, rng: random.Random | None = None) -> None:
        self.lo = lo
        self.hi = hi
        self._next = lo
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self._next = self.lo

    def next_delay(self) -> float:
        d = self._next
        self._next = min(self.hi, self._next * 2)
        return d * (0.5 + self._rng.random() / 2)

    async def sleep(self) -> None:
        await trio.sleep(self.next_delay())


def describe(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        return f"[{host}]:{addr[1]}" if ":" in str(host) else f"{host}:{addr[1]}"
    return str(addr) if addr else "unix"


async def accept_loop(
    sock: trio.socket.SocketType,
    route: str,
    on_accept: Callable[[trio.socket.SocketType, Any], Awaitable[None]],
) -> None:
    """Accept forever on a listening socket; never dies of a transient error."""
    while True:
        try:
            conn, addr = await sock.accept()
        except OSError as e:
            if e.errno in _TRANSIENT_ERRNOS:
                continue
            if e.errno in _RESOURCE_ERRNOS:
                log.warning("route=%s accept failed (%s); pausing accepts for 0.1 s", route, e)
                await trio.sleep(0.1)
                continue
            raise
        await on_accept(conn, addr)


async def wait_done(done: trio.Event | None) -> None:
    if done is not None:
        await done.wait()
