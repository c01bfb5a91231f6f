"""The vSPC side of ONE ESX Telnet connection, sans-IO (h11 style).

Bytes from ESX go in with :meth:`EsxSession.receive_data`; what they mean comes
out of :meth:`EsxSession.next_events` (in stream order), and the protocol's own
replies (option negotiation answers, KNOWN-SUBOPTIONS-2, GET-VM-VC-UUID,
GET-VM-NAME, UNKNOWN-SUBOPTION-RCVD-2, WILL-PROXY / WONT-PROXY) accumulate for
:meth:`EsxSession.data_to_send`. Deliberate output (console bytes to the VM and
vMotion answers) is returned directly by :meth:`send_console`, :meth:`goahead`,
:meth:`notnow` and :meth:`peer_ok`. No I/O, no clock, no randomness: the vMotion
secret is an argument.

Adapter loop::

    s = EsxSession(proxy_rule)
    await stream.send_all(s.initial_bytes())
    while chunk := await stream.receive_some():
        s.receive_data(chunk)
        if out := s.data_to_send():
            await stream.send_all(out)        # answer at once (BEGIN latency!)
        for ev in s.next_events():
            ...                               # ConsoleData, VmUuid, VMotionBegin, ...
            if isinstance(ev, ProtocolViolation):
                log + close this one connection

Wire behaviour
--------------
* On connect we offer WILL BINARY, WILL SGA and ask DO BINARY, DO SGA, DO 232
  (232 = VMware's extension). We accept the same options when ESX offers them
  (and WILL 232 if ESX asks DO 232); everything else -- notably
  AUTHENTICATION (37) and COM-PORT (44), which ESX offers -- is refused. Option
  negotiation is RFC 1143 (no loops, no re-acknowledging).
* All data is 8-bit clean; 0xFF is doubled on output and un-doubled on input.
* KNOWN-SUBOPTIONS-1 from ESX is answered with KNOWN-SUBOPTIONS-2 (every command
  of the extension, all of which we decode), followed by GET-VM-VC-UUID when
  ESX lists VM-VC-UUID or GET-VM-VC-UUID, and GET-VM-NAME when it lists VM-NAME
  or GET-VM-NAME. Identity never depends on DO-PROXY: it comes from VM-VC-UUID.
* DO-PROXY is answered WILL-PROXY when ``proxy_rule(direction, uri)`` is true
  (default: always), else WONT-PROXY. The rule is called synchronously inside
  ``receive_data``: keep it cheap and non-raising (an exception propagates).
* A command code outside the table is answered UNKNOWN-SUBOPTION-RCVD-2(code).
  Commands only a proxy sends (GOAHEAD, GET-*, WILL-PROXY, ...) are answered
  the same way when ESX sends them; UNKNOWN-SUBOPTION-RCVD-1/-2 are never
  answered (no ping-pong).
* Subnegotiations of other options and plain Telnet commands (NOP, AYT, ...)
  are ignored.
* :meth:`probe` is a liveness probe (RFC 860: IAC DO TIMING-MARK). ESX, like any
  Telnet client, answers WILL or WONT TIMING-MARK; that answer is consumed here
  (never re-negotiated: TIMING-MARK is no state) and, like any other bytes read,
  tells the adapter the peer is alive.

Protocol violations
-------------------
A :class:`ProtocolViolation` event is emitted for: an over-long subnegotiation
(``max_subnegotiation`` bytes, default 64 KiB), ``IAC x`` inside a
subnegotiation, an undecodable option-232 command (empty, DO-PROXY without
``S``/``C``), a VM-VC-UUID that is not hex, or a second VM-VC-UUID that
names a different VM. After a violation the session is dead: further input is
ignored and no further events are produced; the service should log and close
that connection. Events before the violation (console data included) stand.
Memory held between calls is bounded by ``max_subnegotiation`` plus whatever
the caller leaves in ``next_events()`` / ``data_to_send()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from common.proto.telnet import codec
from common.proto.telnet import vmware as ext
from common.proto.telnet.codec import (
    BINARY,
    DO,
    IAC,
    SB,
    SE,
    SGA,
    TIMING_MARK,
    VMWARE_EXT,
    WILL,
    WONT,
)
from common.proto.telnet.options import OptionNegotiator
from common.proto.telnet.undouble import undouble
from common.proto.telnet.vmware import (
    VmName,
    VMotionAbort,
    VMotionBegin,
    VMotionComplete,
    VMotionPeer,
)
from vspc.core.identity import canonical_uuid, is_label, label_from_uri

ProxyRule = Callable[[str, str], bool]

#: Options we perform / let ESX perform.
LOCAL_OPTIONS: Final = frozenset({BINARY, SGA, VMWARE_EXT})
REMOTE_OPTIONS: Final = frozenset({BINARY, SGA, VMWARE_EXT})

#: What we list in KNOWN-SUBOPTIONS-2.
PROXY_KNOWN: Final = tuple(sorted(ext.ALL_COMMANDS))

# Commands that only a proxy sends: ESX sending one is answered "unknown".
_PROXY_ONLY: Final = (
    ext.VMotionGoahead,
    ext.VMotionNotNow,
    ext.VMotionPeerOk,
    ext.WillProxy,
    ext.WontProxy,
    ext.GetVmVcUuid,
    ext.GetVmName,
    ext.GetVmBiosUuid,
    ext.GetVmLocationUuid,
)


# --- events -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConsoleData:
    """VM -> appliance console bytes (un-escaped, byte-exact)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class VmUuid:
    """VM-VC-UUID: ``raw`` as ESX sent it (for display), ``key_uuid`` canonical."""

    raw: str
    key_uuid: str


@dataclass(frozen=True, slots=True)
class ProxyRequested:
    """DO-PROXY; ``accepted`` says whether we answered WILL-PROXY."""

    direction: Literal["S", "C"]
    uri: str
    label: str | None
    accepted: bool


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """ESX (or whoever is on the other end) broke the protocol; close the connection."""

    reason: str


SessionEvent = (
    ConsoleData
    | VmUuid
    | VmName
    | ProxyRequested
    | VMotionBegin
    | VMotionPeer
    | VMotionComplete
    | VMotionAbort
    | ProtocolViolation
)


_PROBE: Final = codec.negotiate(DO, TIMING_MARK)
#: A read that is exactly one option-232 command (VMOTION-BEGIN, ...) starts and ends so.
_EXT_HEAD: Final = bytes((IAC, SB, VMWARE_EXT))
_EXT_TAIL: Final = bytes((IAC, SE))


def _accept_all(direction: str, uri: str) -> bool:
    return True


class EsxSession:
    """One ESX connection, vSPC side; see the module docstring."""

    __slots__ = (
        "_events",
        "_initial_sent",
        "_max_sb",
        "_out",
        "_parser",
        "_proxy_rule",
        "bios_uuid",
        "esx_known",
        "label",
        "location_uuid",
        "name",
        "negotiator",
        "uuid",
        "uuid_raw",
        "violation",
    )

    def __init__(
        self,
        proxy_rule: ProxyRule | None = None,
        *,
        max_subnegotiation: int = codec.DEFAULT_MAX_SUBNEGOTIATION,
    ) -> None:
        self._proxy_rule: ProxyRule = proxy_rule or _accept_all
        self._parser = codec.TelnetParser(max_subnegotiation)
        self._max_sb = max_subnegotiation
        self.negotiator = OptionNegotiator(LOCAL_OPTIONS, REMOTE_OPTIONS)
        self._events: list[SessionEvent] = []
        self._out: list[bytes] = []
        self._initial_sent = False
        #: Identity as learned so far (None until ESX says).
        self.uuid_raw: str | None = None
        self.uuid: str | None = None
        self.name: str | None = None
        self.label: str | None = None
        self.bios_uuid: str | None = None
        self.location_uuid: str | None = None
        #: ESX's KNOWN-SUBOPTIONS-1 list, once received.
        self.esx_known: bytes | None = None
        #: Reason of the first protocol violation; the session is dead once set.
        self.violation: str | None = None

    # --- state -----------------------------------------------------------------
    @property
    def binary(self) -> bool:
        """BINARY is enabled in both directions."""
        n = self.negotiator
        return n.is_enabled_local(BINARY) and n.is_enabled_remote(BINARY)

    @property
    def extension_enabled(self) -> bool:
        """ESX agreed to option 232 (either direction)."""
        n = self.negotiator
        return n.is_enabled_remote(VMWARE_EXT) or n.is_enabled_local(VMWARE_EXT)

    # --- input -----------------------------------------------------------------
    def initial_bytes(self) -> bytes:
        """What to send on connect (only the first call returns bytes)."""
        if self._initial_sent:
            return b""
        self._initial_sent = True
        n = self.negotiator
        return b"".join(
            (
                n.request_local(BINARY, True),
                n.request_local(SGA, True),
                n.request_remote(BINARY, True),
                n.request_remote(SGA, True),
                n.request_remote(VMWARE_EXT, True),
            )
        )

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from ESX (``b""``, i.e. EOF, is a no-op)."""
        if self.violation is not None or not data:
            return
        if data[-2:] == _EXT_TAIL and data[:3] == _EXT_HEAD and self._one_command(data):
            return
        events = self._events
        for ev in self._parser.feed(data):
            if isinstance(ev, codec.Data):
                events.append(ConsoleData(ev.data))
            elif isinstance(ev, codec.Negotiate):
                if ev.option == TIMING_MARK and ev.verb in (WILL, WONT):
                    continue  # the answer to our probe: proof of life, nothing to do
                reply, _changes = self.negotiator.receive(ev)
                if reply:
                    self._out.append(reply)
            elif isinstance(ev, codec.Subnegotiation):
                if ev.option == VMWARE_EXT:
                    self._handle_ext(ev.payload)
            elif isinstance(ev, codec.ProtocolError):
                self._violate(ev.reason)
            # codec.Command (NOP, AYT, ...): ignored
            if self.violation is not None:
                return

    def _one_command(self, data: bytes) -> bool:
        """A read that is exactly one option-232 command (a vMotion command, most
        often), the parser between commands: decoded at once, as the parser would
        (every 0xFF inside doubled); False, nothing done, for anything else."""
        inner = data[3:-2]
        if len(inner) > self._max_sb or not self._parser.idle:
            return False
        payload = undouble(inner)  # None: an IAC not doubled (more than one command)
        if payload is None:
            return False
        self._handle_ext(payload)
        return True

    def next_events(self) -> list[SessionEvent]:
        """Events since the last call, in stream order."""
        out, self._events = self._events, []
        return out

    def data_to_send(self) -> bytes:
        """Protocol replies accumulated since the last call."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out = []
        return out

    # --- output ----------------------------------------------------------------
    @staticmethod
    def send_console(data: bytes) -> bytes:
        """Appliance -> VM console bytes, escaped for the wire."""
        return codec.escape(data)

    @staticmethod
    def probe() -> bytes:
        """A liveness probe: IAC DO TIMING-MARK (answered WILL or WONT TIMING-MARK)."""
        return _PROBE

    @staticmethod
    def goahead(seq: bytes, secret: bytes) -> bytes:
        """VMOTION-GOAHEAD(seq + secret)."""
        return ext.encode(ext.VMotionGoahead(seq, secret))

    @staticmethod
    def notnow(seq: bytes) -> bytes:
        """VMOTION-NOTNOW(seq)."""
        return ext.encode(ext.VMotionNotNow(seq))

    @staticmethod
    def peer_ok(seq: bytes) -> bytes:
        """VMOTION-PEER-OK(seq)."""
        return ext.encode(ext.VMotionPeerOk(seq))

    # --- internals ---------------------------------------------------------------
    def _violate(self, reason: str) -> None:
        if self.violation is None:
            self.violation = reason
            self._events.append(ProtocolViolation(reason))

    def _send(self, cmd: ext.VmwareCommand) -> None:
        self._out.append(ext.encode(cmd))

    def _handle_ext(self, payload: bytes) -> None:
        try:
            cmd = ext.decode(payload)
        except ext.MalformedCommand as e:
            self._violate(str(e))
            return
        if isinstance(cmd, VMotionBegin | VMotionPeer | VMotionComplete | VMotionAbort):
            self._events.append(cmd)  # the decoded command is the event: one class each
        elif isinstance(cmd, ext.VmVcUuid | VmName | ext.VmBiosUuid | ext.VmLocationUuid):
            self._on_identity(cmd)
        elif isinstance(cmd, ext.KnownSuboptions):
            self._on_known_suboptions(cmd)
        elif isinstance(cmd, ext.DoProxy):
            self._on_do_proxy(cmd)
        elif isinstance(cmd, ext.Unknown):
            self._send(ext.UnknownSuboptionRcvd(cmd.code))
        elif isinstance(cmd, _PROXY_ONLY):
            self._send(ext.UnknownSuboptionRcvd(payload[0]))
        # ext.UnknownSuboptionRcvd: ESX did not know something we sent: never answered

    def _on_known_suboptions(self, cmd: ext.KnownSuboptions) -> None:
        if cmd.proxy:  # KNOWN-SUBOPTIONS-2 is the proxy's to send
            self._send(ext.UnknownSuboptionRcvd(ext.KNOWN_SUBOPTIONS_2))
            return
        self.esx_known = bytes(cmd.codes)  # (a tuple of ints: 4x the memory per session)
        self._send(ext.KnownSuboptions(PROXY_KNOWN))
        codes = set(cmd.codes)
        if codes & {ext.VM_VC_UUID, ext.GET_VM_VC_UUID}:
            self._send(ext.GetVmVcUuid())
        if codes & {ext.VM_NAME, ext.GET_VM_NAME}:
            self._send(ext.GetVmName())

    def _on_identity(
        self, cmd: ext.VmVcUuid | VmName | ext.VmBiosUuid | ext.VmLocationUuid
    ) -> None:
        if isinstance(cmd, ext.VmVcUuid):
            self._on_vc_uuid(cmd)
        elif isinstance(cmd, VmName):
            self.name = cmd.name
            self._events.append(cmd)
        elif isinstance(cmd, ext.VmBiosUuid):
            self.bios_uuid = cmd.uuid
        else:
            self.location_uuid = cmd.uuid

    def _on_vc_uuid(self, cmd: ext.VmVcUuid) -> None:
        try:
            key = canonical_uuid(cmd.uuid)
        except ValueError:
            self._violate(f"VM-VC-UUID is not a UUID: {cmd.uuid[:40]!r}")
            return
        if self.uuid is not None and key != self.uuid:
            self._violate(f"VM-VC-UUID changed from {self.uuid} to {key}")
            return
        self.uuid_raw, self.uuid = cmd.uuid, key
        self._events.append(VmUuid(cmd.uuid, key))

    def _on_do_proxy(self, cmd: ext.DoProxy) -> None:
        label = label_from_uri(cmd.uri)
        if label is not None and not is_label(label):
            self._violate("DO-PROXY port label is outside the label grammar")
            return
        accepted = bool(self._proxy_rule(cmd.direction, cmd.uri))
        if accepted:
            self.label = label
        self._send(ext.WillProxy() if accepted else ext.WontProxy())
        self._events.append(ProxyRequested(cmd.direction, cmd.uri, label, accepted))
