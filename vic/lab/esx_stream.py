"""The byte side of a simulated ESX connection: sending, the reader, console bytes, closing.

:class:`EsxStream` carries one VM serial port's Telnet stream; what the
decoded Telnet events mean (options, option 232, vMotion) is
:class:`vic.lab.esx_connection.EsxConnection`'s, which builds on it.
"""

from __future__ import annotations

import logging
import random
import ssl

import trio

from vic.lab import rxstamp
from vic.lab import telnet_wire as tw
from vic.lab.esx_behaviour import EsxBehaviour, EsxStats
from vic.lab.esx_errors import ConnectionClosed
from vic.lab.esx_vm import SimVM

log = logging.getLogger("vic.lab.esx_sim")


class EsxStream:
    """A Telnet stream from a simulated ESX host: wire out, decoded events in."""

    def __init__(self, stream: trio.abc.Stream, vm: SimVM, behaviour: EsxBehaviour) -> None:
        self.stream = stream
        self.vm = vm
        self.b = behaviour
        self.stats = EsxStats()
        self.violations: list[str] = []
        self.error: BaseException | None = None
        self.closed = trio.Event()
        self._decoder = tw.Decoder(behaviour.max_sb)
        self._send_lock = trio.Lock()
        self._console = bytearray()
        self._console_event = trio.Event()
        self._last_rx_ns: int | None = None  # kernel arrival time of the last bytes read
        self._cancel = trio.CancelScope()

    @staticmethod
    async def open_stream(
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        local_address: str | None = None,
    ) -> trio.abc.Stream:
        # trio sets TCP_NODELAY; local_address: connect from that address (e.g.
        # 127.0.0.2, another "host" on loopback)
        tcp = await trio.open_tcp_stream(host, port, local_address=local_address)
        if ssl_context is None:
            return tcp
        tls = trio.SSLStream(tcp, ssl_context, server_hostname=server_hostname or host)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        return tls

    # ------------------------------------------------------------ sending

    async def _send_wire(self, wire: bytes) -> None:
        async with self._send_lock:
            try:
                if self.b.one_byte_segments:
                    for k in range(len(wire)):
                        await self.stream.send_all(wire[k : k + 1])
                else:
                    await self.stream.send_all(wire)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                raise ConnectionClosed(f"send failed: {e!r}") from e

    async def send_console(self, data: bytes) -> None:
        """VM -> vSPC console bytes (0xFF doubled on the wire)."""
        self.stats.bytes_sent += len(data)
        await self._send_wire(tw.escape(data))

    async def send_ext(self, cmd: int, payload: bytes = b"", *, escaped: bool = True) -> None:
        """Send one option-232 frame; ``escaped=False`` is a hostile unescaped frame."""
        await self._send_wire(tw.ext(cmd, payload, escaped=escaped))

    async def send_raw(self, wire: bytes) -> None:
        """Send raw wire bytes as they are (garbage, broken frames)."""
        await self._send_wire(wire)

    async def send_garbage(self, rng: random.Random, n: int = 256) -> bytes:
        """Random bytes with IAC sequences that are not valid Telnet; returns them."""
        junk = bytearray(rng.getrandbits(8) for _ in range(n))
        junk += bytes((tw.IAC, tw.SE))  # IAC SE outside SB: always invalid
        await self._send_wire(bytes(junk))
        return bytes(junk)

    async def send_overlong_sub(self, length: int = 1 << 20, *, terminate: bool = True) -> None:
        """A DO-PROXY subnegotiation with a ``length``-byte URI (never ends if not terminate)."""
        body = bytes((tw.IAC, tw.SB, tw.VMWARE_EXT, tw.DO_PROXY)) + b"S" + b"x" * length
        if terminate:
            body += bytes((tw.IAC, tw.SE))
        await self._send_wire(body)

    # ------------------------------------------------------------ receiving

    async def receive_console(self, max_bytes: int | None = None) -> bytes:
        """vSPC -> VM bytes received so far (waits for at least one); b"" once closed."""
        while not self._console:
            if self.closed.is_set():
                return b""
            await self._wait_or_closed(self._console_event)
        n = len(self._console) if max_bytes is None else min(max_bytes, len(self._console))
        out = bytes(self._console[:n])
        del self._console[:n]
        return out

    async def receive_console_exactly(self, n: int) -> bytes:
        while len(self._console) < n:
            if self.closed.is_set():
                raise ConnectionClosed(f"closed with {len(self._console)} of {n} bytes")
            await self._wait_or_closed(self._console_event)
        out = bytes(self._console[:n])
        del self._console[:n]
        return out

    def console_pending(self) -> bytes:
        """vSPC -> VM bytes received and not yet taken (no waiting)."""
        return bytes(self._console)

    def _take_console(self, data: bytes) -> None:
        self._console += data
        self.stats.bytes_received += len(data)
        self._console_event.set()
        self._console_event = trio.Event()

    async def _wait_or_closed(self, ev: trio.Event) -> None:
        """Wait for ``ev`` or for the connection to close, whichever is first."""
        async with trio.open_nursery() as n:

            async def _closed() -> None:
                await self.closed.wait()
                n.cancel_scope.cancel()

            n.start_soon(_closed)
            await ev.wait()
            n.cancel_scope.cancel()

    # ------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """Close the connection (as ESX does when the VM leaves or powers off)."""
        self._cancel.cancel()
        await trio.aclose_forcefully(self.stream)
        self.closed.set()

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait for the vSPC to close the connection."""
        if timeout is None:
            await self.closed.wait()
        else:
            with trio.fail_after(timeout):
                await self.closed.wait()

    # ------------------------------------------------------------ reader

    async def _reader(self) -> None:
        stamped = None
        if self.b.kernel_timestamps and isinstance(self.stream, trio.SocketStream):
            stamped = self.stream.socket if rxstamp.enable(self.stream.socket) else None
        with self._cancel:
            try:
                while True:
                    chunk: bytes | bytearray
                    if stamped is not None:
                        chunk, self._last_rx_ns = await rxstamp.recv_stamped(
                            stamped, self.b.recv_size
                        )
                    else:
                        chunk = await self.stream.receive_some(self.b.recv_size)
                    if not chunk:
                        break
                    for ev in self._decoder.feed(bytes(chunk)):
                        await self._handle(ev)
            except tw.WireError as e:
                for ev in e.events:
                    await self._handle(ev)
                self._violate(f"bad Telnet from the vSPC: {e}")
                self.error = e
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self.error = e
            finally:
                self.closed.set()
                self._wake_waiters()
        if self.error is not None and not isinstance(self.error, trio.ClosedResourceError):
            log.debug("esx-sim %s: connection ended: %r", self.vm.name, self.error)
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)

    def _wake_waiters(self) -> None:
        """The reader ended: wake whoever waits for bytes."""
        self._console_event.set()

    def _violate(self, what: str) -> None:
        log.warning("esx-sim %s: vSPC violation: %s", self.vm.name, what)
        self.violations.append(what)

    async def _handle(self, ev: tw.Event) -> None:
        """One decoded Telnet event from the vSPC (what it means is the subclass's)."""
        raise NotImplementedError
