"""A small, independent Telnet wire codec for the ESX simulator.

Deliberately separate from ``common.proto.telnet`` so that the simulator can catch bugs
in the vSPC's own codec: nothing here is shared with it. Decoding keeps its
state across reads (an IAC may end one read and its command begin the next),
searches for 0xFF instead of looping over plain bytes, and refuses
subnegotiations longer than a configured limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Telnet commands (RFC 854/855).
IAC = 255
DONT = 254
DO = 253
WONT = 252
WILL = 251
SB = 250
GA = 249
NOP = 241
SE = 240

VERBS = (DO, DONT, WILL, WONT)
VERB_NAMES = {DO: "DO", DONT: "DONT", WILL: "WILL", WONT: "WONT"}

# Options.
BINARY = 0
ECHO = 1
SGA = 3
TIMING_MARK = 6  # RFC 860: DO TIMING-MARK is answered WILL (or WONT) each time
AUTHENTICATION = 37
COM_PORT = 44
VMWARE_EXT = 232

# VMware Telnet extension (option 232) commands.
KNOWN_SUBOPTIONS_1 = 0
KNOWN_SUBOPTIONS_2 = 1
UNKNOWN_SUBOPTION_RCVD_1 = 2
UNKNOWN_SUBOPTION_RCVD_2 = 3
VMOTION_BEGIN = 40
VMOTION_GOAHEAD = 41
VMOTION_NOTNOW = 43
VMOTION_PEER = 44
VMOTION_PEER_OK = 45
VMOTION_COMPLETE = 46
VMOTION_ABORT = 48
DO_PROXY = 70
WILL_PROXY = 71
WONT_PROXY = 73
VM_VC_UUID = 80
GET_VM_VC_UUID = 81
VM_NAME = 82
GET_VM_NAME = 83
VM_BIOS_UUID = 84
GET_VM_BIOS_UUID = 85
VM_LOCATION_UUID = 86
GET_VM_LOCATION_UUID = 87

EXT_NAMES = {
    KNOWN_SUBOPTIONS_1: "KNOWN-SUBOPTIONS-1",
    KNOWN_SUBOPTIONS_2: "KNOWN-SUBOPTIONS-2",
    UNKNOWN_SUBOPTION_RCVD_1: "UNKNOWN-SUBOPTION-RCVD-1",
    UNKNOWN_SUBOPTION_RCVD_2: "UNKNOWN-SUBOPTION-RCVD-2",
    VMOTION_BEGIN: "VMOTION-BEGIN",
    VMOTION_GOAHEAD: "VMOTION-GOAHEAD",
    VMOTION_NOTNOW: "VMOTION-NOTNOW",
    VMOTION_PEER: "VMOTION-PEER",
    VMOTION_PEER_OK: "VMOTION-PEER-OK",
    VMOTION_COMPLETE: "VMOTION-COMPLETE",
    VMOTION_ABORT: "VMOTION-ABORT",
    DO_PROXY: "DO-PROXY",
    WILL_PROXY: "WILL-PROXY",
    WONT_PROXY: "WONT-PROXY",
    VM_VC_UUID: "VM-VC-UUID",
    GET_VM_VC_UUID: "GET-VM-VC-UUID",
    VM_NAME: "VM-NAME",
    GET_VM_NAME: "GET-VM-NAME",
    VM_BIOS_UUID: "VM-BIOS-UUID",
    GET_VM_BIOS_UUID: "GET-VM-BIOS-UUID",
    VM_LOCATION_UUID: "VM-LOCATION-UUID",
    GET_VM_LOCATION_UUID: "GET-VM-LOCATION-UUID",
}

_IAC_B = b"\xff"
_IAC_IAC = b"\xff\xff"


# ---------------------------------------------------------------- encoding


def escape(data: bytes) -> bytes:
    """Double every 0xFF (data and subnegotiation payloads alike)."""
    return data.replace(_IAC_B, _IAC_IAC)


def negotiation(verb: int, option: int) -> bytes:
    return bytes((IAC, verb, option))


def subnegotiation(option: int, payload: bytes, *, escaped: bool = True) -> bytes:
    """``IAC SB option payload IAC SE``; ``escaped=False`` leaves 0xFF single (hostile)."""
    body = escape(payload) if escaped else payload
    return bytes((IAC, SB, option)) + body + bytes((IAC, SE))


def ext(cmd: int, payload: bytes = b"", *, escaped: bool = True) -> bytes:
    """An option-232 frame: ``IAC SB 232 cmd payload IAC SE``."""
    return subnegotiation(VMWARE_EXT, bytes((cmd,)) + payload, escaped=escaped)


# ---------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Data:
    data: bytes


@dataclass(frozen=True)
class Negotiation:
    verb: int
    option: int

    def __str__(self) -> str:
        return f"{VERB_NAMES.get(self.verb, self.verb)} {self.option}"


@dataclass(frozen=True)
class Subnegotiation:
    option: int
    payload: bytes  # un-doubled


@dataclass(frozen=True)
class Command:
    code: int  # NOP, GA, ... (anything after IAC that is not a verb, SB or IAC)


Event = Data | Negotiation | Subnegotiation | Command


class WireError(ValueError):
    """The peer sent something that is not valid Telnet.

    ``events`` holds what the same ``feed`` call decoded before the error.
    """

    events: list[Event]

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.events = []


_S_DATA, _S_IAC, _S_VERB, _S_SB_OPT, _S_SB, _S_SB_IAC = range(6)


def _flush(out: list[Event], pending: bytearray) -> None:
    if pending:
        out.append(Data(bytes(pending)))
        pending.clear()


class Decoder:
    """Incremental Telnet decoder: ``feed(bytes) -> list[Event]``.

    Adjacent data is merged into one :class:`Data` per call. Raises
    :class:`WireError` on a subnegotiation longer than ``max_sb`` or on an IAC
    inside a subnegotiation that is followed by neither IAC nor SE.

    One method per state (``_STATES``, indexed by the state) takes the chunk and
    a position, moves ``_state`` and returns the position after what it used:
    DATA and SB jump to the next IAC with ``bytes.find``, the others read one byte.
    """

    def __init__(self, max_sb: int = 4096) -> None:
        self.max_sb = max_sb
        self._state = _S_DATA
        self._verb = 0
        self._sb_opt = 0
        self._sb = bytearray()

    @property
    def idle(self) -> bool:
        """True when no command or subnegotiation is half-received."""
        return self._state == _S_DATA

    def feed(self, chunk: bytes) -> list[Event]:
        out: list[Event] = []
        try:
            return self._feed(chunk, out)
        except WireError as e:
            e.events = out
            raise

    def _feed(self, chunk: bytes, out: list[Event]) -> list[Event]:
        data = bytes(chunk)
        pending = bytearray()
        i, n = 0, len(data)
        states = _STATES
        while i < n:
            i = states[self._state](self, data, i, out, pending)
        _flush(out, pending)
        return out

    def _data(self, data: bytes, i: int, out: list[Event], pending: bytearray) -> int:
        j = data.find(IAC, i)
        if j < 0:
            pending += data[i:]
            return len(data)
        if j + 1 < len(data) and data[j + 1] == IAC:  # doubled 0xFF: one data byte
            pending += data[i : j + 1]
            return j + 2
        pending += data[i:j]
        self._state = _S_IAC
        return j + 1

    def _iac(self, data: bytes, i: int, out: list[Event], pending: bytearray) -> int:
        b = data[i]
        if b == IAC:
            pending.append(IAC)
            self._state = _S_DATA
            return i + 1
        _flush(out, pending)
        if b in VERBS:
            self._verb = b
            self._state = _S_VERB
        elif b == SB:
            self._state = _S_SB_OPT
        elif b == SE:
            raise WireError("IAC SE outside a subnegotiation")
        else:
            out.append(Command(b))
            self._state = _S_DATA
        return i + 1

    def _verb_option(self, data: bytes, i: int, out: list[Event], pending: bytearray) -> int:
        out.append(Negotiation(self._verb, data[i]))
        self._state = _S_DATA
        return i + 1

    def _sb_option(self, data: bytes, i: int, out: list[Event], pending: bytearray) -> int:
        self._sb_opt = data[i]
        self._sb.clear()
        self._state = _S_SB
        return i + 1

    def _sb_data(self, data: bytes, i: int, out: list[Event], pending: bytearray) -> int:
        j = data.find(IAC, i)
        end = len(data) if j < 0 else j
        self._sb += data[i:end]
        if len(self._sb) > self.max_sb:
            _flush(out, pending)
            raise WireError(f"subnegotiation longer than {self.max_sb} bytes")
        if j < 0:
            return end
        self._state = _S_SB_IAC
        return j + 1

    def _sb_iac(self, data: bytes, i: int, out: list[Event], pending: bytearray) -> int:
        b = data[i]
        if b == IAC:
            self._sb.append(IAC)
            if len(self._sb) > self.max_sb:
                raise WireError(f"subnegotiation longer than {self.max_sb} bytes")
            self._state = _S_SB
        elif b == SE:
            out.append(Subnegotiation(self._sb_opt, bytes(self._sb)))
            self._sb.clear()
            self._state = _S_DATA
        else:
            raise WireError(f"IAC {b} inside a subnegotiation")
        return i + 1


_STATES: tuple[Callable[[Decoder, bytes, int, list[Event], bytearray], int], ...] = (
    Decoder._data,  # _S_DATA
    Decoder._iac,  # _S_IAC
    Decoder._verb_option,  # _S_VERB
    Decoder._sb_option,  # _S_SB_OPT
    Decoder._sb_data,  # _S_SB
    Decoder._sb_iac,  # _S_SB_IAC
)


def decode_all(data: bytes, max_sb: int = 4096) -> list[Event]:
    """Decode a complete byte string (helper for tests)."""
    return Decoder(max_sb).feed(data)
