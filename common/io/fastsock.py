"""Socket calls for the vSPC's bulk paths without trio's per-call machinery.

A ``trio.SocketStream`` call goes through a conflict detector, error translation
and a cancel/yield sandwich around every syscall, and ``send_all`` makes one
such call (with its own yield) per partial send. The ESX reader and the console
clients' senders make a call per chunk of a VM's bulk output, so this module
makes the non-blocking syscall itself on the trio socket's own stdlib socket and
waits through trio (``wait_readable`` / ``wait_writable``) only when the kernel
says it would block (the pattern of ``common.io.rawsock``, whose ``stdlib_socket`` it
uses, with trio's error translation and yields kept, which the peer link's raw
calls do without).

Scheduling is kept as trio's where it matters:

* ``Receiver.receive_some`` yields exactly once per call (while waiting for the
  socket, else after the syscall), so whoever the reader wakes (a console
  client's sender) still runs between two of its reads: a client is not dropped
  as "slow" because the reader read twice in a row.
* ``Sender.send_all`` yields when it has to wait for the socket, and otherwise
  only every ``YIELD_EVERY`` calls (a sender only runs while its queue has bytes,
  which only other tasks add, so it cannot starve them for long).

Both check for cancellation before their syscall, like trio. Streams of any
other kind (TLS, prefixed relayed streams, test streams) get the stream's own
methods: see ``receiver`` and ``sender``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable

import trio

from common.io.rawsock import stdlib_socket

Buffer = bytes | bytearray | memoryview
ReceiveSome = Callable[[int], Awaitable[bytes | bytearray]]
SendAll = Callable[[Buffer], Awaitable[None]]

#: Sends that completed without waiting between two voluntary yields.
YIELD_EVERY = 8


def _stdlib_socket(stream: trio.abc.Stream) -> tuple[trio.socket.SocketType, socket.socket] | None:
    if type(stream) is not trio.SocketStream:
        return None
    tsock = stream.socket
    sock = stdlib_socket(tsock)
    return None if sock is None else (tsock, sock)


def _stream_error(e: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    """What ``trio.SocketStream`` raises for ``e``."""
    if e.errno == errno.EBADF:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {e}")


class Receiver:
    __slots__ = ("sock", "tsock")

    def __init__(self, tsock: trio.socket.SocketType, sock: socket.socket) -> None:
        self.tsock = tsock
        self.sock = sock  # trio's own, non-blocking; trio closes it

    async def receive_some(self, size: int) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            data = self.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            raise _stream_error(e) from e
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        while True:
            try:
                await trio.lowlevel.wait_readable(self.tsock)
            except OSError as e:  # closed meanwhile
                raise _stream_error(e) from e
            try:
                return self.sock.recv(size)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                raise _stream_error(e) from e


class Sender:
    __slots__ = ("_n", "sock", "tsock")

    def __init__(self, tsock: trio.socket.SocketType, sock: socket.socket) -> None:
        self.tsock = tsock
        self.sock = sock
        self._n = 0

    async def send_all(self, data: Buffer) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self.sock
        mv = memoryview(data)
        waited = False
        while True:
            try:
                n = sock.send(mv)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                raise _stream_error(e) from e
            if n >= len(mv):
                break
            mv = mv[n:]
            try:
                await trio.lowlevel.wait_writable(self.tsock)
            except OSError as e:
                raise _stream_error(e) from e
            waited = True
        if waited:
            self._n = 0
            return
        self._n += 1
        if self._n >= YIELD_EVERY:
            self._n = 0
            await trio.lowlevel.cancel_shielded_checkpoint()  # the bytes are sent


def receiver(stream: trio.abc.Stream) -> ReceiveSome:
    """``stream.receive_some``, or the same without trio's per-call machinery."""
    socks = _stdlib_socket(stream)
    return stream.receive_some if socks is None else Receiver(*socks).receive_some


def sender(stream: trio.abc.Stream) -> SendAll:
    """``stream.send_all``, or the same without trio's per-call machinery."""
    socks = _stdlib_socket(stream)
    return stream.send_all if socks is None else Sender(*socks).send_all
