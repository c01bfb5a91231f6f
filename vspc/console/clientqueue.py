"""An attached console client's bounded send queue, and the notices written into it.

Chunks are queued without a copy; a client whose queue would overflow is
dropped by its console (see ``vspc.console.hub``).

A client on a plain socket (``direct``) is written straight from ``push`` while
nothing is queued or being sent: one non-blocking send in the VM reader's task,
no hop through the client's sender task (a wake-up and a scheduler round per
read while a VM writes in bulk). What the socket does not take is queued and
the sender writes it, so the bytes keep their order and the queue its bound.
"""

from __future__ import annotations

from collections import deque
from itertools import count

import trio

from common.io.fastsock import FastSocket
from common.proto.console.protocol import Mode

#: Most bytes handed to one client send (queued chunks are joined up to this).
SEND_CHUNK = 1024 * 1024
#: Most queued buffers handed to one (vectored) send.
MAX_PARTS = 512
_client_ids = count(1)


def notice(text: str) -> bytes:
    """A one-line notice inside a client's byte stream."""
    return f"\r\n[vic console: {text}]\r\n".encode()


class Client:
    """One attached client: a bounded queue of byte chunks drained by its connection's sender.

    Chunks are kept as they come (immutable ``bytes``, or read-only views of
    ``bytes``), so queueing costs no copy; ``queued`` counts their bytes and is
    what the bound applies to.
    """

    __slots__ = (
        "_wake",
        "chunks",
        "closed",
        "credit",
        "direct",
        "dropped",
        "id",
        "mode",
        "notices",
        "notified_epoch",
        "peer",
        "queued",
        "scope",
        "sending",
        "sent",
    )

    def __init__(self, mode: Mode, peer: str, initial: bytes, notices: bool = True) -> None:
        self.id = next(_client_ids)
        self.mode: Mode = mode
        self.notices = notices  # told when the VM goes and comes back
        self.peer = peer
        self.chunks: deque[bytes | memoryview] = deque()
        if initial:
            self.chunks.append(_frozen(initial))
        self.queued = len(initial)
        # the replay (and status line) may exceed the live limit once, at attach
        self.credit = len(initial)
        self.closed = False
        self.dropped = False
        self.notified_epoch = -1
        self.sent = 0
        self.scope: trio.CancelScope | None = None
        #: The client's plain socket, once its sender runs: ``push`` may write it.
        self.direct: FastSocket | None = None
        self.sending = False  # the sender holds parts (from next_parts) not yet sent
        self._wake = trio.Event()

    @property
    def writes(self) -> bool:
        return self.mode != "ro"

    def push(self, data: bytes | bytearray | memoryview, limit: int) -> bool:
        """Queue bytes; False (and nothing queued) when the queue would overflow."""
        if self.closed:
            return True
        n = len(data)
        if self.queued + n > limit + self.credit:
            return False
        if n and self.direct is not None and not self.chunks and not self.sending:
            done = self._send_now(data)
            if done == n:
                return True
            data = memoryview(data)[done:]
            n -= done
        if n:
            self.chunks.append(_frozen(data))
            self.queued += n
            self._wake.set()
        return True

    def _send_now(self, data: bytes | bytearray | memoryview) -> int:
        """Bytes of ``data`` the socket took at once (0 on an error: the sender,
        writing what is queued instead, meets it and ends the client)."""
        assert self.direct is not None
        try:
            n = self.direct.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            self.direct = None
            return 0
        self.sent += n
        return n

    def close(self, final: bytes = b"", deadline: float | None = None) -> None:
        """No more data after ``final``; pending data is discarded if ``final`` is given."""
        if self.closed:
            return
        self.closed = True
        self.direct = None
        if final:
            self.chunks.clear()
            self.chunks.append(_frozen(final))
            self.queued = len(final)
            self.credit = 0
        if deadline is not None and self.scope is not None:
            self.scope.deadline = min(self.scope.deadline, deadline)
        self._wake.set()

    async def next_chunk(self) -> bytes | memoryview:
        """``next_parts`` joined into one buffer (b"" once closed and drained)."""
        parts = await self.next_parts()
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def next_parts(self) -> list[bytes | memoryview]:
        """The next bytes to send, at most SEND_CHUNK of them, as the queued
        buffers themselves (for a vectored send: no join, no copy); [] once
        closed and drained.

        Small queued chunks go out together; a large one is sent in SEND_CHUNK
        slices (views, no copy).
        """
        chunks = self.chunks
        self.sending = False  # (the caller sent the last parts)
        while not chunks:
            if self.closed:
                return []
            self._wake = trio.Event()
            await self._wake.wait()
        self.sending = True
        out = chunks.popleft()
        n = len(out)
        parts = [out]
        if n > SEND_CHUNK:
            mv = out if isinstance(out, memoryview) else memoryview(out)
            chunks.appendleft(mv[SEND_CHUNK:])
            parts[0] = mv[:SEND_CHUNK]
            n = SEND_CHUNK
        else:
            while chunks and n + len(chunks[0]) <= SEND_CHUNK and len(parts) < MAX_PARTS:
                c = chunks.popleft()
                parts.append(c)
                n += len(c)
        self.queued -= n
        self.credit = max(0, self.credit - n)
        self.sent += n
        return parts


def _frozen(data: bytes | bytearray | memoryview) -> bytes | memoryview:
    """``data`` itself when it cannot change under us (bytes, a view of bytes), else a copy."""
    if type(data) is bytes:
        return data
    if isinstance(data, memoryview) and type(data.obj) is bytes and data.contiguous:
        return data if data.itemsize == 1 else data.cast("B")
    return bytes(data)
