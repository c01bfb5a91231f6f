"""An ESX host simulator: ESX's side of the vSPC protocol (Telnet + option 232).

Independent of ``common.proto.telnet`` (it has its own codec in
:mod:`vic.lab.telnet_wire`) so that it can catch the vSPC's bugs. One
:class:`EsxConnection` is one VM serial port's network connection, as ESX makes
it when the port points at a vSPC URI::

    vm = SimVM.random(rng)
    async with EsxConnection.connect("127.0.0.1", 13370, vm=vm, label="serial0") as c:
        await c.send_console(b"login: ")
        data = await c.receive_console()          # appliance -> VM bytes
        secret = await c.vmotion_begin(seq)       # source role
        ...

``EsxConnection.open(nursery, ...)`` does the same without a context manager
(the connection's reader task runs in the given nursery), and :func:`migrate`
runs a whole vMotion: BEGIN on the source, a new destination connection,
PEER, PEER-OK, COMPLETE, then the source closes.

Behaviour modelled on ESX: it offers WILL BINARY/SGA/232 and DO BINARY/SGA,
and also WILL AUTHENTICATION and WILL COM-PORT, which the vSPC may refuse
(option negotiation follows RFC 1143, so no loops; DO TIMING-MARK is answered
WILL TIMING-MARK each time, per RFC 860, unless ``answer_timing_mark`` is off);
once 232 is enabled it sends KNOWN-SUBOPTIONS-1 and (unless told not to) DO-PROXY; it answers
GET-VM-VC-UUID, GET-VM-NAME, GET-VM-BIOS-UUID and GET-VM-LOCATION-UUID, and
UNKNOWN-SUBOPTION-RCVD-1 to anything it does not know. All output is
0xFF-escaped; with ``one_byte_segments`` every wire byte is its own send
(TCP_NODELAY is on), which also splits every frame at every byte.

Anything the vSPC does that a real ESX would find wrong is recorded in
:attr:`EsxConnection.violations` (tests assert it stays empty).
"""

from __future__ import annotations

import logging
import math
import random
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from vic.lab import rxstamp
from vic.lab import telnet_wire as tw

log = logging.getLogger("vic.lab.esx_sim")

#: What ESX lists in KNOWN-SUBOPTIONS-1 by default: every command of the extension.
DEFAULT_KNOWN: tuple[int, ...] = tuple(sorted(tw.EXT_NAMES))

#: ESX gives up on a vMotion whose BEGIN is not answered within 5 s.
ESX_BEGIN_TIMEOUT = 5.0

# Commands that only a proxy (vSPC) may send to ESX.
_FROM_PROXY = {
    tw.KNOWN_SUBOPTIONS_2,
    tw.UNKNOWN_SUBOPTION_RCVD_2,
    tw.VMOTION_GOAHEAD,
    tw.VMOTION_NOTNOW,
    tw.VMOTION_PEER_OK,
    tw.WILL_PROXY,
    tw.WONT_PROXY,
    tw.GET_VM_VC_UUID,
    tw.GET_VM_NAME,
    tw.GET_VM_BIOS_UUID,
    tw.GET_VM_LOCATION_UUID,
}
_VMOTION_REPLIES = {tw.VMOTION_GOAHEAD, tw.VMOTION_NOTNOW, tw.VMOTION_PEER_OK}


# ---------------------------------------------------------------- errors


class SimError(Exception):
    """Base of the simulator's errors."""


class ConnectionClosed(SimError):
    """The vSPC closed the connection (or it failed)."""


class ProtocolViolation(SimError):
    """The vSPC sent something a real ESX would reject."""


class HandshakeTimeout(SimError, trio.TooSlowError):
    """The vSPC did not finish the Telnet/option-232 handshake in time."""


class VMotionNotNow(SimError):
    """The vSPC answered BEGIN with NOTNOW."""


class VMotionTimeout(SimError):
    """No answer in time (ESX would fail the migration)."""


class VMotionRefused(SimError):
    """The vSPC closed the connection instead of answering PEER."""


# ---------------------------------------------------------------- VMs


def esx_uuid_format(hex32: str) -> str:
    """32 hex digits as ESX displays a VC UUID: ``"42 3f ... 5f-60 71 ... d7"``."""
    h = hex32.lower()
    if len(h) != 32 or any(c not in "0123456789abcdef" for c in h):
        raise ValueError(f"need 32 hex digits, got {hex32!r}")
    pairs = [h[i : i + 2] for i in range(0, 32, 2)]
    return " ".join(pairs[:8]) + "-" + " ".join(pairs[8:])


@dataclass(frozen=True)
class SimVM:
    """A simulated VM's identity as ESX reports it."""

    uuid: str  # VC UUID in ESX's display form (spaces and a dash)
    name: str
    bios_uuid: str = ""
    location_uuid: str = ""

    @property
    def canonical_uuid(self) -> str:
        return "".join(self.uuid.split()).replace("-", "").lower()

    @classmethod
    def random(cls, rng: random.Random, name: str | None = None) -> SimVM:
        h = f"{rng.getrandbits(128):032x}"
        bios = f"{rng.getrandbits(128):032x}"
        loc = f"{rng.getrandbits(128):032x}"
        return cls(
            uuid=esx_uuid_format(h),
            name=name if name is not None else f"vm-{h[:8]}",
            bios_uuid=esx_uuid_format(bios),
            location_uuid=esx_uuid_format(loc),
        )


def random_seq(rng: random.Random, *, length: int = 8, with_ff: bool = False) -> bytes:
    """A vMotion sequence; ``with_ff`` puts 0xFF bytes in it (at both ends and the middle)."""
    seq = bytearray(rng.getrandbits(8) for _ in range(length))
    if with_ff:
        for k in {0, length // 2, length - 1}:
            seq[k] = 0xFF
    return bytes(seq)


def service_uri_with_label(uri: str, label: str | None) -> str:
    if not label:
        return uri
    sep = "&" if "?" in uri else "?"
    return f"{uri}{sep}port={label}"


# ---------------------------------------------------------------- behaviour


@dataclass
class EsxBehaviour:
    """Knobs for how the simulated ESX behaves (defaults: like ESX)."""

    label: str | None = None  # serial port label, sent as ?port=<label> in DO-PROXY's URI
    service_uri: str = "vic-console"  # the VM serial port's "Port URI"
    direction: str = "S"  # DO-PROXY direction: S(erver) or C(lient)
    do_proxy: bool = True  # a vMotion destination may send no DO-PROXY at all
    one_byte_segments: bool = False  # one send per wire byte
    initiate: bool = True  # offer WILL/DO BINARY, SGA, WILL 232 right away
    offer_auth: bool = True  # offer WILL AUTHENTICATION (vSPC may refuse)
    offer_comport: bool = True  # offer WILL COM-PORT (vSPC may refuse)
    # answer DO TIMING-MARK with WILL TIMING-MARK, as a Telnet client does (RFC 860);
    # False: a hung host whose TCP is still up (never answers a liveness probe)
    answer_timing_mark: bool = True
    known: tuple[int, ...] = DEFAULT_KNOWN  # KNOWN-SUBOPTIONS-1 list
    begin_timeout: float = ESX_BEGIN_TIMEOUT
    max_sb: int = 4096  # longest subnegotiation accepted from the vSPC
    wait_ready: bool = True  # open() waits for the 232 handshake to finish
    wait_identity: bool = True  # ...including the vSPC asking GET-VM-VC-UUID
    ready_timeout: float = 10.0
    recv_size: int = 65536
    # plain TCP: read with kernel receive timestamps (vic.lab.rxstamp) and time
    # each BEGIN's answer also by when it reached this host (begin_kernel_latencies)
    kernel_timestamps: bool = False


@dataclass
class _OptState:
    us: str = "no"  # our side: no / yes / wantyes / wantno
    him: str = "no"


# ---------------------------------------------------------------- connection


@dataclass
class _Stats:
    bytes_sent: int = 0  # console bytes, before escaping
    bytes_received: int = 0  # console bytes, after unescaping
    stale_replies: int = 0  # late GOAHEAD/NOTNOW/PEER-OK for a vMotion already given up
    begin_latencies: list[float] = field(default_factory=list)
    # BEGIN sent -> its GOAHEAD/NOTNOW read by the reader task (before the waiting
    # task is woken: without this simulator's own scheduling of that task)
    begin_receipt_latencies: list[float] = field(default_factory=list)
    # BEGIN sent -> its answer in this host's kernel (EsxBehaviour.kernel_timestamps):
    # without this process's own wake-up and event loop either
    begin_kernel_latencies: list[float] = field(default_factory=list)


class EsxConnection:
    """One VM serial port's Telnet connection from a simulated ESX host to a vSPC."""

    def __init__(self, stream: trio.abc.Stream, vm: SimVM, behaviour: EsxBehaviour) -> None:
        self.stream = stream
        self.vm = vm
        self.b = behaviour
        self.stats = _Stats()
        self.violations: list[str] = []
        self.received_ext: list[tuple[int, bytes]] = []  # every 232 frame from the vSPC
        self.received_other: list[tw.Event] = []  # negotiations, commands, other SBs
        self.proxy_known: list[int] | None = None  # KNOWN-SUBOPTIONS-2 payload
        self.proxy_answer: int | None = None  # WILL-PROXY / WONT-PROXY
        self.unknown_reported: list[int] = []  # UNKNOWN-SUBOPTION-RCVD-2 payloads
        self.timing_marks = 0  # DO TIMING-MARK received (liveness probes)
        self.identity_asked = trio.Event()
        self.ext_refused = False
        self.error: BaseException | None = None
        self.closed = trio.Event()
        self._opts: dict[int, _OptState] = {}
        self._decoder = tw.Decoder(behaviour.max_sb)
        self._send_lock = trio.Lock()
        self._ready = trio.Event()
        self._console = bytearray()
        self._console_event = trio.Event()
        self._replies: list[tuple[int, bytes]] = []
        self._abandoned: list[bytes] = []  # seqs whose BEGIN timed out
        self._begin_receipt: float | None = None  # when the reader got the current answer
        self._begin_receipt_ns: int | None = None  # ...its kernel arrival time (wall clock, ns)
        self._last_rx_ns: int | None = None  # kernel arrival time of the last bytes read
        self._current_seq: bytes | None = None
        self._reply_event = trio.Event()
        self._cancel = trio.CancelScope()
        self._ext_started = False
        self._local_ok = {tw.BINARY, tw.SGA, tw.VMWARE_EXT}
        if behaviour.offer_auth:
            self._local_ok.add(tw.AUTHENTICATION)
        if behaviour.offer_comport:
            self._local_ok.add(tw.COM_PORT)
        self._remote_ok = {tw.BINARY, tw.SGA, tw.VMWARE_EXT}

    # ------------------------------------------------------------ opening

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

    @classmethod
    async def open(
        cls,
        nursery: trio.Nursery,
        host: str,
        port: int,
        *,
        vm: SimVM,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        behaviour: EsxBehaviour | None = None,
        local_address: str | None = None,
        **knobs: object,
    ) -> EsxConnection:
        """Connect, negotiate, and (by default) wait for the 232 handshake.

        ``knobs`` are :class:`EsxBehaviour` fields (``label=``, ``do_proxy=``,
        ``one_byte_segments=`` ...). The reader task runs in ``nursery``.
        """
        b = behaviour if behaviour is not None else EsxBehaviour()
        for k, v in knobs.items():
            if not hasattr(b, k):
                raise TypeError(f"unknown EsxBehaviour field {k!r}")
            setattr(b, k, v)
        stream = await cls.open_stream(
            host,
            port,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            local_address=local_address,
        )
        conn = cls(stream, vm, b)
        nursery.start_soon(conn._reader)
        await conn._start()
        if b.wait_ready:
            try:
                await conn.wait_ready(b.ready_timeout)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
                raise
        return conn

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, host: str, port: int, *, vm: SimVM, **kwargs: object
    ) -> AsyncIterator[EsxConnection]:
        """``async with EsxConnection.connect(host, port, vm=vm, ...) as c:``"""
        async with trio.open_nursery() as nursery:
            conn = await cls.open(nursery, host, port, vm=vm, **kwargs)  # type: ignore[arg-type]
            try:
                yield conn
            finally:
                await conn.aclose()

    async def _start(self) -> None:
        out = bytearray()
        if self.b.initiate:
            for opt in (tw.BINARY, tw.SGA):
                out += self._ask_local(opt)
                out += self._ask_remote(opt)
            out += self._ask_local(tw.VMWARE_EXT)
        if self.b.offer_auth:
            out += self._ask_local(tw.AUTHENTICATION)
        if self.b.offer_comport:
            out += self._ask_local(tw.COM_PORT)
        if out:
            await self._send_wire(bytes(out))

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the 232 handshake is done (or 232 refused).

        Raises HandshakeTimeout (a trio.TooSlowError) or ConnectionClosed.
        """
        limit = timeout if timeout is not None else self.b.ready_timeout
        with trio.move_on_after(limit) as scope:
            async with trio.open_nursery() as n:

                async def _closed() -> None:
                    await self.closed.wait()
                    n.cancel_scope.cancel()

                n.start_soon(_closed)
                await self._ready.wait()
                n.cancel_scope.cancel()
        if scope.cancelled_caught:
            raise HandshakeTimeout(f"handshake not finished within {limit} s")
        if not self._ready.is_set():
            raise ConnectionClosed(f"closed before the handshake finished: {self.error!r}")

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

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
            await self._wait_console_or_close()
        n = len(self._console) if max_bytes is None else min(max_bytes, len(self._console))
        out = bytes(self._console[:n])
        del self._console[:n]
        return out

    async def receive_console_exactly(self, n: int) -> bytes:
        while len(self._console) < n:
            if self.closed.is_set():
                raise ConnectionClosed(f"closed with {len(self._console)} of {n} bytes")
            await self._wait_console_or_close()
        out = bytes(self._console[:n])
        del self._console[:n]
        return out

    def console_pending(self) -> bytes:
        """vSPC -> VM bytes received and not yet taken (no waiting)."""
        return bytes(self._console)

    async def _wait_console_or_close(self) -> None:
        ev = self._console_event
        async with trio.open_nursery() as n:

            async def _closed() -> None:
                await self.closed.wait()
                n.cancel_scope.cancel()

            n.start_soon(_closed)
            await ev.wait()
            n.cancel_scope.cancel()

    # ------------------------------------------------------------ vMotion

    def _is_stale(self, cmd: int, payload: bytes) -> bool:
        """A late answer to a BEGIN (or PEER) this ESX already gave up on."""
        return any(payload.startswith(old) for old in self._abandoned) and not (
            self._current_seq is not None and payload.startswith(self._current_seq)
        )

    def _pick_reply(self, cmds: set[int]) -> tuple[int, bytes] | None:
        """Take the first queued reply among ``cmds``, dropping late (stale) ones."""
        k = 0
        while k < len(self._replies):
            cmd, payload = self._replies[k]
            if cmd not in cmds:
                k += 1
                continue
            del self._replies[k]
            if self._is_stale(cmd, payload):
                self.stats.stale_replies += 1
                log.info("esx-sim %s: late %s ignored", self.vm.name, tw.EXT_NAMES[cmd])
                continue
            return cmd, payload
        return None

    async def _wait_reply(self, cmds: set[int], timeout: float) -> tuple[int, bytes] | None:
        """First queued vMotion reply among ``cmds``; None on timeout; raises if closed.

        Late replies to sequences given up on earlier are dropped (and counted).
        """
        deadline = trio.current_time() + timeout if math.isfinite(timeout) else math.inf
        while True:
            picked = self._pick_reply(cmds)
            if picked is not None:
                return picked
            if self.closed.is_set():
                raise ConnectionClosed(f"connection closed while waiting: {self.error!r}")
            ev = self._reply_event
            with trio.move_on_at(deadline) as scope:
                async with trio.open_nursery() as n:

                    async def _closed() -> None:
                        await self.closed.wait()
                        n.cancel_scope.cancel()

                    n.start_soon(_closed)
                    await ev.wait()
                    n.cancel_scope.cancel()
            if scope.cancelled_caught:
                return None

    async def vmotion_begin(self, seq: bytes, *, timeout: float | None = None) -> bytes:
        """Source role: send BEGIN(seq), wait for GOAHEAD; return the secret.

        Raises VMotionNotNow, VMotionTimeout (ESX's 5 s give-up by default),
        ConnectionClosed, or ProtocolViolation (GOAHEAD not starting with seq).
        """
        limit = self.b.begin_timeout if timeout is None else timeout
        t0 = trio.current_time()
        t0_ns = time.time_ns()
        self._current_seq = seq
        self._begin_receipt = None
        self._begin_receipt_ns = None
        try:
            await self.send_ext(tw.VMOTION_BEGIN, seq)
            reply = await self._wait_reply({tw.VMOTION_GOAHEAD, tw.VMOTION_NOTNOW}, limit)
        finally:
            self._current_seq = None
        if reply is None:
            self._abandoned = [*self._abandoned[-63:], seq]
            raise VMotionTimeout(f"no GOAHEAD/NOTNOW within {limit} s")
        self.stats.begin_latencies.append(trio.current_time() - t0)
        if self._begin_receipt is not None:
            self.stats.begin_receipt_latencies.append(self._begin_receipt - t0)
        if self._begin_receipt_ns is not None:
            self.stats.begin_kernel_latencies.append((self._begin_receipt_ns - t0_ns) / 1e9)
        cmd, payload = reply
        if cmd == tw.VMOTION_NOTNOW:
            if payload != seq:
                self._violate(f"NOTNOW for seq {payload.hex()}, expected {seq.hex()}")
            raise VMotionNotNow(payload.hex())
        if not payload.startswith(seq):
            self._violate(f"GOAHEAD {payload.hex()} does not start with seq {seq.hex()}")
            raise ProtocolViolation("GOAHEAD does not carry the sequence")
        secret = payload[len(seq) :]
        if not secret:
            self._violate("GOAHEAD with an empty secret")
        return secret

    async def vmotion_abort(self) -> None:
        """Source role: VMOTION-ABORT (the VM runs on here)."""
        await self.send_ext(tw.VMOTION_ABORT)

    async def vmotion_peer(
        self, seq: bytes, secret: bytes, *, timeout: float = ESX_BEGIN_TIMEOUT
    ) -> None:
        """Destination role: PEER(seq+secret), wait for PEER-OK(seq).

        Raises VMotionTimeout when the vSPC stays silent, VMotionRefused when it
        closes the connection instead.
        """
        try:
            await self.send_ext(tw.VMOTION_PEER, seq + secret)
            reply = await self._wait_reply({tw.VMOTION_PEER_OK}, timeout)
        except ConnectionClosed as e:
            raise VMotionRefused(str(e)) from e
        if reply is None:
            raise VMotionTimeout(f"no PEER-OK within {timeout} s")
        if reply[1] != seq:
            self._violate(f"PEER-OK for {reply[1].hex()}, expected {seq.hex()}")
            raise ProtocolViolation("PEER-OK with the wrong sequence")

    async def vmotion_complete(self, seq: bytes) -> None:
        """Destination role: VMOTION-COMPLETE(seq); this connection now carries the VM."""
        await self.send_ext(tw.VMOTION_COMPLETE, seq)

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
                self._console_event.set()
                self._reply_event.set()
        if self.error is not None and not isinstance(self.error, trio.ClosedResourceError):
            log.debug("esx-sim %s: connection ended: %r", self.vm.name, self.error)
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)

    def _violate(self, what: str) -> None:
        log.warning("esx-sim %s: vSPC violation: %s", self.vm.name, what)
        self.violations.append(what)

    async def _handle(self, ev: tw.Event) -> None:
        if isinstance(ev, tw.Data):
            self._console += ev.data
            self.stats.bytes_received += len(ev.data)
            self._console_event.set()
            self._console_event = trio.Event()
        elif isinstance(ev, tw.Negotiation):
            self.received_other.append(ev)
            if ev.option == tw.TIMING_MARK and ev.verb == tw.DO:
                self.timing_marks += 1
                if self.b.answer_timing_mark:  # everything before it is processed: mark
                    await self._send_wire(tw.negotiation(tw.WILL, tw.TIMING_MARK))
                return
            reply = self._negotiate(ev.verb, ev.option)
            if reply:
                await self._send_wire(reply)
            await self._maybe_start_ext()
        elif isinstance(ev, tw.Subnegotiation):
            if ev.option == tw.VMWARE_EXT:
                await self._handle_ext(ev.payload)
            else:
                self.received_other.append(ev)
                if ev.option not in (tw.AUTHENTICATION, tw.COM_PORT) or not self._enabled_any(
                    ev.option
                ):
                    self._violate(f"subnegotiation for option {ev.option} not enabled")
        else:
            self.received_other.append(ev)

    def _enabled_any(self, opt: int) -> bool:
        st = self._opts.get(opt)
        return st is not None and (st.us == "yes" or st.him == "yes")

    # RFC 1143 (simplified: no queue bits; the simulator never changes its mind).
    def _st(self, opt: int) -> _OptState:
        st = self._opts.get(opt)
        if st is None:
            st = self._opts[opt] = _OptState()
        return st

    def _ask_local(self, opt: int) -> bytes:
        st = self._st(opt)
        if st.us == "no":
            st.us = "wantyes"
            return tw.negotiation(tw.WILL, opt)
        return b""

    def _ask_remote(self, opt: int) -> bytes:
        st = self._st(opt)
        if st.him == "no":
            st.him = "wantyes"
            return tw.negotiation(tw.DO, opt)
        return b""

    def _negotiate(self, verb: int, opt: int) -> bytes:  # noqa: C901
        st = self._st(opt)
        if verb == tw.DO:
            if st.us == "no":
                if opt in self._local_ok:
                    st.us = "yes"
                    return tw.negotiation(tw.WILL, opt)
                return tw.negotiation(tw.WONT, opt)
            if st.us == "wantyes":
                st.us = "yes"
            elif st.us == "wantno":
                self._violate(f"DO {opt} answering our WONT")
                st.us = "no"
            else:
                self._violate(f"DO {opt} re-acknowledged (already enabled)")
            return b""
        if verb == tw.DONT:
            if st.us == "yes":
                st.us = "no"
                if opt == tw.VMWARE_EXT:
                    self.ext_refused = True
                    self._ready.set()
                return tw.negotiation(tw.WONT, opt)
            if st.us in ("wantyes", "wantno"):
                st.us = "no"  # refused (or acknowledged our WONT)
                if opt == tw.VMWARE_EXT:
                    self.ext_refused = True
                    self._ready.set()
            # DONT while already off: allowed, no reply (RFC 1143)
            return b""
        if verb == tw.WILL:
            if st.him == "no":
                if opt in self._remote_ok:
                    st.him = "yes"
                    return tw.negotiation(tw.DO, opt)
                return tw.negotiation(tw.DONT, opt)
            if st.him == "wantyes":
                st.him = "yes"
            elif st.him == "wantno":
                self._violate(f"WILL {opt} answering our DONT")
                st.him = "no"
            else:
                self._violate(f"WILL {opt} re-acknowledged (already enabled)")
            return b""
        if verb == tw.WONT:
            if st.him == "yes":
                st.him = "no"
                return tw.negotiation(tw.DONT, opt)
            if st.him in ("wantyes", "wantno"):
                st.him = "no"
            return b""
        return b""

    async def _maybe_start_ext(self) -> None:
        if self._ext_started or self._st(tw.VMWARE_EXT).us != "yes":
            return
        self._ext_started = True
        out = tw.ext(tw.KNOWN_SUBOPTIONS_1, bytes(self.b.known))
        if self.b.do_proxy:
            uri = service_uri_with_label(self.b.service_uri, self.b.label)
            out += tw.ext(tw.DO_PROXY, self.b.direction.encode() + uri.encode())
        await self._send_wire(out)
        self._check_ready()

    def _check_ready(self) -> None:
        if self._ready.is_set() or not self._ext_started:
            return
        if self.proxy_known is None:
            return
        if self.b.do_proxy and self.proxy_answer is None:
            return
        if (
            self.b.wait_identity
            and tw.GET_VM_VC_UUID in self.b.known
            and not self.identity_asked.is_set()
        ):
            return
        self._ready.set()

    async def _handle_ext(self, payload: bytes) -> None:  # noqa: C901
        if not payload:
            self._violate("empty option-232 subnegotiation")
            return
        cmd, body = payload[0], payload[1:]
        self.received_ext.append((cmd, body))
        if cmd not in self.b.known or cmd not in _FROM_PROXY:
            if cmd in _FROM_PROXY or cmd not in tw.EXT_NAMES:
                pass  # a command we chose not to list, or one that does not exist
            else:
                self._violate(f"{tw.EXT_NAMES[cmd]} is not for the proxy to send")
            await self.send_ext(tw.UNKNOWN_SUBOPTION_RCVD_1, bytes((cmd,)))
            return
        if cmd == tw.KNOWN_SUBOPTIONS_2:
            if self.proxy_known is not None:
                self._violate("KNOWN-SUBOPTIONS-2 sent twice")
            self.proxy_known = list(body)
        elif cmd == tw.UNKNOWN_SUBOPTION_RCVD_2:
            self.unknown_reported.extend(body)
        elif cmd in (tw.WILL_PROXY, tw.WONT_PROXY):
            if body:
                self._violate(f"{tw.EXT_NAMES[cmd]} with a payload")
            if not self.b.do_proxy:
                self._violate(f"{tw.EXT_NAMES[cmd]} without a DO-PROXY")
            self.proxy_answer = cmd
        elif cmd in _VMOTION_REPLIES:
            if (
                cmd != tw.VMOTION_PEER_OK
                and self._begin_receipt is None
                and self._current_seq is not None
                and body.startswith(self._current_seq)
            ):
                self._begin_receipt = trio.current_time()
                self._begin_receipt_ns = self._last_rx_ns
            self._replies.append((cmd, body))
            self._reply_event.set()
            self._reply_event = trio.Event()
        elif cmd == tw.GET_VM_VC_UUID:
            await self.send_ext(tw.VM_VC_UUID, self.vm.uuid.encode("ascii"))
            self.identity_asked.set()
        elif cmd == tw.GET_VM_NAME:
            await self.send_ext(tw.VM_NAME, self.vm.name.encode("utf-8"))
        elif cmd == tw.GET_VM_BIOS_UUID:
            await self.send_ext(tw.VM_BIOS_UUID, self.vm.bios_uuid.encode("ascii"))
        elif cmd == tw.GET_VM_LOCATION_UUID:
            await self.send_ext(tw.VM_LOCATION_UUID, self.vm.location_uuid.encode("ascii"))
        self._check_ready()

    # ------------------------------------------------------------ introspection

    def ext_received(self, cmd: int) -> list[bytes]:
        """Payloads of every option-232 ``cmd`` frame the vSPC sent."""
        return [p for c, p in self.received_ext if c == cmd]

    def option_state(self, opt: int) -> tuple[str, str]:
        """(our side, his side) of an option: ``no``/``yes``/``wantyes``/``wantno``."""
        st = self._st(opt)
        return st.us, st.him


# ---------------------------------------------------------------- whole vMotion


@dataclass
class Migration:
    dest: EsxConnection
    seq: bytes
    secret: bytes


async def migrate(
    source: EsxConnection,
    host: str,
    port: int,
    *,
    nursery: trio.Nursery,
    seq: bytes | None = None,
    rng: random.Random | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    dest_do_proxy: bool = False,
    one_byte_segments: bool | None = None,
    complete: bool = True,
    close_source: bool = True,
    peer_timeout: float = ESX_BEGIN_TIMEOUT,
    dest_behaviour: EsxBehaviour | None = None,
    dest_local_address: str | None = None,
) -> Migration:
    """Run a whole vMotion of ``source.vm`` to a new connection at ``host:port``.

    BEGIN on the source (VM paused from here), a new destination connection
    (negotiated; DO-PROXY only if ``dest_do_proxy``), PEER(seq+secret),
    PEER-OK, then COMPLETE and the source closes. If the destination does not
    get PEER-OK the source sends ABORT, the destination closes and the error is
    re-raised (the VM runs on at the source). ``complete=False`` stops after
    PEER-OK (a destination that never completes).
    """
    rng = rng or random.Random()
    seq = seq if seq is not None else random_seq(rng)
    secret = await source.vmotion_begin(seq)
    if dest_behaviour is None:
        dest_behaviour = EsxBehaviour(
            label=source.b.label,
            service_uri=source.b.service_uri,
            direction=source.b.direction,
            do_proxy=dest_do_proxy,
            one_byte_segments=(
                source.b.one_byte_segments if one_byte_segments is None else one_byte_segments
            ),
            kernel_timestamps=source.b.kernel_timestamps,
        )
    try:
        dest = await EsxConnection.open(
            nursery,
            host,
            port,
            vm=source.vm,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            behaviour=dest_behaviour,
            local_address=dest_local_address,  # the destination host's address
        )
    except BaseException:
        with trio.CancelScope(shield=True):
            if not source.closed.is_set():
                await source.vmotion_abort()
        raise
    try:
        await dest.vmotion_peer(seq, secret, timeout=peer_timeout)
    except BaseException:
        with trio.CancelScope(shield=True):
            if not source.closed.is_set():
                await source.vmotion_abort()
            await dest.aclose()
        raise
    if complete:
        await dest.vmotion_complete(seq)
        if close_source:
            await source.aclose()
    return Migration(dest, seq, secret)


def known_without(*cmds: int) -> tuple[int, ...]:
    """The default KNOWN-SUBOPTIONS-1 list minus some commands."""
    drop = set(cmds)
    return tuple(c for c in DEFAULT_KNOWN if c not in drop)


def chunks(data: bytes, size: int) -> Iterable[bytes]:
    for k in range(0, len(data), size):
        yield data[k : k + size]
