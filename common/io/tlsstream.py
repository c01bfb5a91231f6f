"""A lean TLS stream for peer links (``ssl.SSLObject`` over memory BIOs).

``trio.SSLStream`` hands back one TLS record (at most 16 KiB) per
``receive_some`` and goes through the scheduler for each; a peer link moving
hundreds of MB/s wants the opposite: read a large block from the socket, then
decrypt every complete record in it at once. This stream does that, with the
same contract as a trio ``Stream``: ``send_all`` / ``receive_some`` (``b""`` at
the peer's close_notify or EOF) / ``aclose``. Any TLS failure (a corrupted
record, a bad MAC, a truncated stream) raises ``trio.BrokenResourceError``.

Outgoing TLS bytes are taken from the BIO and sent under one lock, so records
leave in the order OpenSSL produced them even when the reader has to answer
(post-handshake messages) while a writer is sending.
"""

from __future__ import annotations

import ssl
from typing import Any, cast

import trio

from common.io.fastsock import FastSocket, fast_socket

READ_SIZE = 256 * 1024
RECORD = 16 * 1024  # TLS maximum record payload


class TlsStream(trio.abc.Stream):
    def __init__(
        self,
        transport: trio.abc.Stream,
        ctx: ssl.SSLContext,
        *,
        server_side: bool,
        read_size: int = READ_SIZE,
    ) -> None:
        self.transport = transport
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._in, self._out, server_side=server_side)
        self._send_lock = trio.Lock()
        self._read_size = read_size
        self._eof = False
        self._broken: BaseException | None = None
        self._rbuf: memoryview | None = None
        self._raw: FastSocket | None = None  # our own non-blocking calls on the socket

    # ------------------------------------------------------------- info
    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._ssl.getpeercert(binary_form=binary_form)

    def version(self) -> str | None:
        return self._ssl.version()

    def cipher(self) -> Any:
        return self._ssl.cipher()

    def input_pending(self) -> bool:
        """Received TLS bytes not decrypted yet (or decrypted, not read yet)."""
        return self._in.pending > 0 or self._ssl.pending() > 0

    # ------------------------------------------------------------- plumbing
    def _fastsock(self) -> FastSocket | None:
        if self._raw is None and isinstance(self.transport, trio.SocketStream):
            self._raw = fast_socket(self.transport.socket)
        return self._raw

    async def _flush(self) -> None:
        if not self._out.pending:
            return
        lock, raw = self._send_lock, self._fastsock()
        if raw is not None and not lock.locked():
            # nobody else is sending: no scheduler round unless the socket is full
            lock.acquire_nowait()
            try:
                views = [memoryview(self._out.read())]
                raw.try_send(views)
                if views:
                    await raw.send_parts(views)
            except BaseException as e:
                self._broken = e
                raise
            finally:
                lock.release()
            return
        async with lock:
            data = self._out.read()
            if data:
                raw = self._fastsock()
                try:
                    if raw is not None:
                        await raw.send_parts((data,))
                    else:
                        await self.transport.send_all(data)
                except BaseException as e:
                    self._broken = e
                    raise

    async def _fill(self) -> None:
        t = self.transport
        raw = self._fastsock()
        if raw is not None:
            # into one reusable buffer: no allocation per read
            if self._rbuf is None:
                self._rbuf = memoryview(bytearray(self._read_size))
            n = await raw.recv_into(self._rbuf)
            if n:
                self._in.write(self._rbuf[:n])
                return
        else:
            data = await t.receive_some(self._read_size)
            if data:
                self._in.write(data)
                return
        self._in.write_eof()
        self._eof = True

    def _tls_failed(self, e: ssl.SSLError) -> trio.BrokenResourceError:
        err = trio.BrokenResourceError(f"TLS failure: {e}")
        self._broken = err
        return err

    async def do_handshake(self) -> None:
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if self._eof:
                    raise trio.BrokenResourceError("peer closed during the TLS handshake") from None
                await self._fill()
            except ssl.SSLError as e:
                await self._flush_quietly()
                raise self._tls_failed(e) from e
        await self._flush()

    async def _flush_quietly(self) -> None:
        try:
            await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    # ------------------------------------------------------------- Stream
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._broken is not None:
            raise trio.BrokenResourceError("TLS stream is broken") from self._broken
        try:
            self._ssl.write(data)
        except ssl.SSLError as e:
            raise self._tls_failed(e) from e
        await self._flush()
        await trio.lowlevel.checkpoint()

    async def send_parts(self, parts: list[bytes | bytearray | memoryview]) -> None:
        """``send_all`` of the concatenation, without building it."""
        if self._broken is not None:
            raise trio.BrokenResourceError("TLS stream is broken") from self._broken
        try:
            write = self._ssl.write
            # Each write ends a TLS record: small parts (frame headers) are joined
            # with the start of what follows, up to one full record, so a header
            # never travels as a record of its own.
            head = bytearray()
            for p in parts:
                n = len(p)
                if not head and n >= RECORD:
                    write(p)
                    continue
                room = RECORD - len(head)
                if n < room:
                    head += p
                    continue
                head += memoryview(p)[:room]
                write(head)
                head = bytearray()
                if n > room:
                    rest = memoryview(p)[room:]
                    if len(rest) >= RECORD:
                        write(rest)
                    else:
                        head += rest
            if head:
                write(head)
        except ssl.SSLError as e:
            raise self._tls_failed(e) from e
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    def _decrypt(self, limit: int) -> tuple[list[bytes], bool]:
        """Decrypt what has been received, up to ``limit`` bytes: (parts, closed)."""
        parts: list[bytes] = []
        got = 0
        closed = False
        try:
            while got < limit:
                d = self._ssl.read(limit - got)
                if not d:
                    closed = True
                    break
                parts.append(d)
                got += len(d)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            closed = True
        except ssl.SSLError as e:
            if not parts:
                raise self._tls_failed(e) from e
            # hand out what decrypted fine; the error shows on the next call
            self._broken = self._tls_failed(e)
        return parts, closed

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        limit = max_bytes or self._read_size
        while True:
            if self._broken is not None:
                raise trio.BrokenResourceError("TLS stream is broken") from self._broken
            parts, closed = self._decrypt(limit)
            if self._out.pending:
                await self._flush()
            if parts:
                await trio.lowlevel.checkpoint()
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if closed:
                await trio.lowlevel.checkpoint()
                return b""
            if self._eof:
                raise trio.BrokenResourceError("peer closed without TLS close_notify")
            await self._fill()

    async def receive_into(self, buf: memoryview) -> int:
        """Like ``receive_some`` but decrypts straight into ``buf``; 0 at the end."""
        n = await self.recv_into(buf)
        await trio.lowlevel.checkpoint()
        return n

    async def recv_into(self, buf: memoryview) -> int:
        """``receive_into`` that yields only when it has to wait for the socket (a
        loop that calls it must checkpoint now and then, like ``FastSocket.recv_into``)."""
        limit = len(buf)
        while True:
            if self._broken is not None:
                raise trio.BrokenResourceError("TLS stream is broken") from self._broken
            got = 0
            closed = False
            try:
                while got < limit:
                    # with a buffer, read() returns the count (typeshed says bytes)
                    k = cast(int, self._ssl.read(limit - got, buf[got:]))
                    if not k:
                        closed = True
                        break
                    got += k
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                closed = True
            except ssl.SSLError as e:
                if not got:
                    raise self._tls_failed(e) from e
                self._broken = self._tls_failed(e)
            if self._out.pending:
                await self._flush()
            if got or closed:
                return got
            if self._eof:
                raise trio.BrokenResourceError("peer closed without TLS close_notify")
            await self._fill()

    async def aclose(self) -> None:
        if self._broken is None:
            try:
                self._ssl.unwrap()
            except ssl.SSLError:
                pass
            with trio.move_on_after(1):
                await self._flush_quietly()
        await self.transport.aclose()
