"""One VM serial port's Telnet connection from a simulated ESX host to a vSPC.

What the connection means on top of its bytes (:class:`vic.lab.esx_stream.EsxStream`):
option negotiation, the option-232 handshake and answers, and both vMotion roles.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from vic.lab import telnet_wire as tw
from vic.lab.esx_behaviour import ESX_BEGIN_TIMEOUT, EsxBehaviour
from vic.lab.esx_errors import (
    ConnectionClosed,
    HandshakeTimeout,
    ProtocolViolation,
    VMotionNotNow,
    VMotionRefused,
    VMotionTimeout,
)
from vic.lab.esx_options import OptionTable
from vic.lab.esx_replies import VMotionReplies
from vic.lab.esx_stream import EsxStream
from vic.lab.esx_vm import SimVM, service_uri_with_label

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
# GET-VM-* -> the command that answers it
_IDENTITY_ANSWERS = {
    tw.GET_VM_VC_UUID: tw.VM_VC_UUID,
    tw.GET_VM_NAME: tw.VM_NAME,
    tw.GET_VM_BIOS_UUID: tw.VM_BIOS_UUID,
    tw.GET_VM_LOCATION_UUID: tw.VM_LOCATION_UUID,
}


class EsxConnection(EsxStream):
    """One VM serial port's Telnet connection from a simulated ESX host to a vSPC."""

    def __init__(self, stream: trio.abc.Stream, vm: SimVM, behaviour: EsxBehaviour) -> None:
        super().__init__(stream, vm, behaviour)
        self.received_ext: list[tuple[int, bytes]] = []  # every 232 frame from the vSPC
        self.received_other: list[tw.Event] = []  # negotiations, commands, other SBs
        self.proxy_known: list[int] | None = None  # KNOWN-SUBOPTIONS-2 payload
        self.proxy_answer: int | None = None  # WILL-PROXY / WONT-PROXY
        self.unknown_reported: list[int] = []  # UNKNOWN-SUBOPTION-RCVD-2 payloads
        self.timing_marks = 0  # DO TIMING-MARK received (liveness probes)
        self.identity_asked = trio.Event()
        self.ext_refused = False
        self._ready = trio.Event()
        self._replies = VMotionReplies(vm.name, self.stats)
        self._ext_started = False
        local_ok = {tw.BINARY, tw.SGA, tw.VMWARE_EXT}
        if behaviour.offer_auth:
            local_ok.add(tw.AUTHENTICATION)
        if behaviour.offer_comport:
            local_ok.add(tw.COM_PORT)
        remote_ok = {tw.BINARY, tw.SGA, tw.VMWARE_EXT}
        self._options = OptionTable(local_ok, remote_ok, self._violate, self._local_refused)

    # ------------------------------------------------------------ opening

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
                out += self._options.ask_local(opt)
                out += self._options.ask_remote(opt)
            out += self._options.ask_local(tw.VMWARE_EXT)
        if self.b.offer_auth:
            out += self._options.ask_local(tw.AUTHENTICATION)
        if self.b.offer_comport:
            out += self._options.ask_local(tw.COM_PORT)
        if out:
            await self._send_wire(bytes(out))

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the 232 handshake is done (or 232 refused).

        Raises HandshakeTimeout (a trio.TooSlowError) or ConnectionClosed.
        """
        limit = timeout if timeout is not None else self.b.ready_timeout
        with trio.move_on_after(limit) as scope:
            await self._wait_or_closed(self._ready)
        if scope.cancelled_caught:
            raise HandshakeTimeout(f"handshake not finished within {limit} s")
        if not self._ready.is_set():
            raise ConnectionClosed(f"closed before the handshake finished: {self.error!r}")

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    # ------------------------------------------------------------ vMotion

    async def _wait_reply(self, cmds: set[int], timeout: float) -> tuple[int, bytes] | None:
        """First queued vMotion reply among ``cmds``; None on timeout; raises if closed.

        Late replies to sequences given up on earlier are dropped (and counted).
        """
        deadline = trio.current_time() + timeout if math.isfinite(timeout) else math.inf
        while True:
            picked = self._replies.pick(cmds)
            if picked is not None:
                return picked
            if self.closed.is_set():
                raise ConnectionClosed(f"connection closed while waiting: {self.error!r}")
            ev = self._replies.event
            with trio.move_on_at(deadline) as scope:
                await self._wait_or_closed(ev)
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
        self._replies.expect(seq)
        try:
            await self.send_ext(tw.VMOTION_BEGIN, seq)
            reply = await self._wait_reply({tw.VMOTION_GOAHEAD, tw.VMOTION_NOTNOW}, limit)
        finally:
            self._replies.current_seq = None
        if reply is None:
            self._replies.abandon(seq)
            raise VMotionTimeout(f"no GOAHEAD/NOTNOW within {limit} s")
        self._note_begin_latencies(t0, t0_ns)
        return self._begin_answer(seq, *reply)

    def _note_begin_latencies(self, t0: float, t0_ns: int) -> None:
        self.stats.begin_latencies.append(trio.current_time() - t0)
        if self._replies.receipt is not None:
            self.stats.begin_receipt_latencies.append(self._replies.receipt - t0)
        if self._replies.receipt_ns is not None:
            self.stats.begin_kernel_latencies.append((self._replies.receipt_ns - t0_ns) / 1e9)

    def _begin_answer(self, seq: bytes, cmd: int, payload: bytes) -> bytes:
        """The secret in a GOAHEAD for ``seq``; raises on NOTNOW or a wrong answer."""
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

    # ------------------------------------------------------------ events

    def _wake_waiters(self) -> None:
        super()._wake_waiters()
        self._replies.event.set()

    async def _handle(self, ev: tw.Event) -> None:
        if isinstance(ev, tw.Data):
            self._take_console(ev.data)
        elif isinstance(ev, tw.Negotiation):
            self.received_other.append(ev)
            await self._handle_negotiation(ev)
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

    async def _handle_negotiation(self, ev: tw.Negotiation) -> None:
        if ev.option == tw.TIMING_MARK and ev.verb == tw.DO:
            self.timing_marks += 1
            if self.b.answer_timing_mark:  # everything before it is processed: mark
                await self._send_wire(tw.negotiation(tw.WILL, tw.TIMING_MARK))
            return
        reply = self._options.negotiate(ev.verb, ev.option)
        if reply:
            await self._send_wire(reply)
        await self._maybe_start_ext()

    def _enabled_any(self, opt: int) -> bool:
        return self._options.enabled_any(opt)

    def _local_refused(self, opt: int) -> None:
        """The vSPC turned off (or refused) one of our options."""
        if opt == tw.VMWARE_EXT:
            self.ext_refused = True
            self._ready.set()

    async def _maybe_start_ext(self) -> None:
        if self._ext_started or self._options.state(tw.VMWARE_EXT).us != "yes":
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

    async def _handle_ext(self, payload: bytes) -> None:
        if not payload:
            self._violate("empty option-232 subnegotiation")
            return
        cmd, body = payload[0], payload[1:]
        self.received_ext.append((cmd, body))
        if cmd not in self.b.known or cmd not in _FROM_PROXY:
            if cmd not in _FROM_PROXY and cmd in tw.EXT_NAMES:
                self._violate(f"{tw.EXT_NAMES[cmd]} is not for the proxy to send")
            # else: a command we chose not to list, or one that does not exist
            await self.send_ext(tw.UNKNOWN_SUBOPTION_RCVD_1, bytes((cmd,)))
            return
        if cmd in _VMOTION_REPLIES:
            self._replies.put(cmd, body, self._last_rx_ns)
        elif cmd in _IDENTITY_ANSWERS:
            await self._answer_identity(cmd)
        else:
            self._note_proxy(cmd, body)
        self._check_ready()

    def _note_proxy(self, cmd: int, body: bytes) -> None:
        """KNOWN-SUBOPTIONS-2, UNKNOWN-SUBOPTION-RCVD-2, WILL-PROXY or WONT-PROXY."""
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

    async def _answer_identity(self, cmd: int) -> None:
        """GET-VM-VC-UUID, GET-VM-NAME, GET-VM-BIOS-UUID or GET-VM-LOCATION-UUID."""
        vm = self.vm
        if cmd == tw.GET_VM_VC_UUID:
            value = vm.uuid.encode("ascii")
        elif cmd == tw.GET_VM_NAME:
            value = vm.name.encode("utf-8")
        elif cmd == tw.GET_VM_BIOS_UUID:
            value = vm.bios_uuid.encode("ascii")
        else:
            value = vm.location_uuid.encode("ascii")
        await self.send_ext(_IDENTITY_ANSWERS[cmd], value)
        if cmd == tw.GET_VM_VC_UUID:
            self.identity_asked.set()

    # ------------------------------------------------------------ introspection

    def ext_received(self, cmd: int) -> list[bytes]:
        """Payloads of every option-232 ``cmd`` frame the vSPC sent."""
        return [p for c, p in self.received_ext if c == cmd]

    def option_state(self, opt: int) -> tuple[str, str]:
        """(our side, his side) of an option: ``no``/``yes``/``wantyes``/``wantno``."""
        st = self._options.state(opt)
        return st.us, st.him
