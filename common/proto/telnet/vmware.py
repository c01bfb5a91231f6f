"""VMware Telnet extension (option 232), sans-IO: command codes, decoded commands,
``decode(payload)`` and ``encode(cmd)``.

Frame on the wire: ``IAC SB 232 <cmd> <payload> IAC SE`` with 0xFF doubled in
``<cmd> <payload>``. :func:`decode` takes the *un-doubled* subnegotiation payload
(``codec.Subnegotiation.payload``, i.e. ``<cmd> <payload>``); :func:`encode`
returns the whole frame, doubled, ready to send.

Notes
-----
* Sequences and secrets are opaque bytes (any value, 0xFF included).
* VMOTION-GOAHEAD and VMOTION-PEER carry ``sequence + secret`` with no
  delimiter, so a decoded GOAHEAD cannot be split: :func:`decode` returns
  ``VMotionGoahead(seq=<whole cookie>, secret=b"")``; compare ``.cookie``.
  VMOTION-PEER is kept whole as ``VMotionPeer(cookie)``.
* Text payloads: VM-NAME is UTF-8; the UUIDs are ASCII. Decoding uses
  ``errors="replace"`` so it never fails on odd bytes (identity code validates
  the UUID afterwards).
* A command whose code is not in the table decodes to ``Unknown(code,
  payload)``; the proxy must answer it with UNKNOWN-SUBOPTION-RCVD-2.
* :func:`decode` raises :class:`MalformedCommand` (a ``ValueError``) only for
  an empty payload or a DO-PROXY without a valid direction (``S`` or ``C``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from .codec import VMWARE_EXT, subnegotiation

# --- command codes (DESIGN.md §3) --------------------------------------------
KNOWN_SUBOPTIONS_1: Final = 0
KNOWN_SUBOPTIONS_2: Final = 1
UNKNOWN_SUBOPTION_RCVD_1: Final = 2
UNKNOWN_SUBOPTION_RCVD_2: Final = 3
VMOTION_BEGIN: Final = 40
VMOTION_GOAHEAD: Final = 41
VMOTION_NOTNOW: Final = 43
VMOTION_PEER: Final = 44
VMOTION_PEER_OK: Final = 45
VMOTION_COMPLETE: Final = 46
VMOTION_ABORT: Final = 48
DO_PROXY: Final = 70
WILL_PROXY: Final = 71
WONT_PROXY: Final = 73
VM_VC_UUID: Final = 80
GET_VM_VC_UUID: Final = 81
VM_NAME: Final = 82
GET_VM_NAME: Final = 83
VM_BIOS_UUID: Final = 84
GET_VM_BIOS_UUID: Final = 85
VM_LOCATION_UUID: Final = 86
GET_VM_LOCATION_UUID: Final = 87

ALL_COMMANDS: Final = frozenset(
    {
        KNOWN_SUBOPTIONS_1,
        KNOWN_SUBOPTIONS_2,
        UNKNOWN_SUBOPTION_RCVD_1,
        UNKNOWN_SUBOPTION_RCVD_2,
        VMOTION_BEGIN,
        VMOTION_GOAHEAD,
        VMOTION_NOTNOW,
        VMOTION_PEER,
        VMOTION_PEER_OK,
        VMOTION_COMPLETE,
        VMOTION_ABORT,
        DO_PROXY,
        WILL_PROXY,
        WONT_PROXY,
        VM_VC_UUID,
        GET_VM_VC_UUID,
        VM_NAME,
        GET_VM_NAME,
        VM_BIOS_UUID,
        GET_VM_BIOS_UUID,
        VM_LOCATION_UUID,
        GET_VM_LOCATION_UUID,
    }
)

NAMES: Final = {
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


class MalformedCommand(ValueError):
    """An option-232 payload that cannot be decoded."""


# --- decoded commands --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KnownSuboptions:
    """KNOWN-SUBOPTIONS-1 (from ESX, ``proxy=False``) or -2 (from the proxy)."""

    codes: tuple[int, ...]
    proxy: bool = True


@dataclass(frozen=True, slots=True)
class UnknownSuboptionRcvd:
    """UNKNOWN-SUBOPTION-RCVD-1 (from ESX, ``proxy=False``) or -2 (from the proxy)."""

    code: int
    proxy: bool = True


@dataclass(frozen=True, slots=True)
class VMotionBegin:
    """Source ESX: the vSPC answers at once with GOAHEAD or NOTNOW.

    Also the :class:`~vspc.core.esx_session.EsxSession` event for it (one class for both).
    """

    seq: bytes


@dataclass(frozen=True, slots=True)
class VMotionGoahead:
    """Sent by the proxy: ``seq + secret``. Decoding puts the whole cookie in ``seq``."""

    seq: bytes
    secret: bytes

    @property
    def cookie(self) -> bytes:
        return self.seq + self.secret


@dataclass(frozen=True, slots=True)
class VMotionNotNow:
    seq: bytes


@dataclass(frozen=True, slots=True)
class VMotionPeer:
    """Sent by the destination ESX: ``seq + secret`` as one opaque cookie (no delimiter)."""

    cookie: bytes


@dataclass(frozen=True, slots=True)
class VMotionPeerOk:
    seq: bytes


@dataclass(frozen=True, slots=True)
class VMotionComplete:
    seq: bytes


@dataclass(frozen=True, slots=True)
class VMotionAbort:
    pass


@dataclass(frozen=True, slots=True)
class DoProxy:
    """DO-PROXY: ``direction`` ``"S"`` (VM is server) or ``"C"``, then the service URI."""

    direction: Literal["S", "C"]
    uri: str


@dataclass(frozen=True, slots=True)
class WillProxy:
    pass


@dataclass(frozen=True, slots=True)
class WontProxy:
    pass


@dataclass(frozen=True, slots=True)
class VmVcUuid:
    uuid: str


@dataclass(frozen=True, slots=True)
class GetVmVcUuid:
    pass


@dataclass(frozen=True, slots=True)
class VmName:
    name: str


@dataclass(frozen=True, slots=True)
class GetVmName:
    pass


@dataclass(frozen=True, slots=True)
class VmBiosUuid:
    uuid: str


@dataclass(frozen=True, slots=True)
class GetVmBiosUuid:
    pass


@dataclass(frozen=True, slots=True)
class VmLocationUuid:
    uuid: str


@dataclass(frozen=True, slots=True)
class GetVmLocationUuid:
    pass


@dataclass(frozen=True, slots=True)
class Unknown:
    """A command code not in the table (or a code we chose not to model)."""

    code: int
    payload: bytes = b""


VmwareCommand = (
    KnownSuboptions
    | UnknownSuboptionRcvd
    | VMotionBegin
    | VMotionGoahead
    | VMotionNotNow
    | VMotionPeer
    | VMotionPeerOk
    | VMotionComplete
    | VMotionAbort
    | DoProxy
    | WillProxy
    | WontProxy
    | VmVcUuid
    | GetVmVcUuid
    | VmName
    | GetVmName
    | VmBiosUuid
    | GetVmBiosUuid
    | VmLocationUuid
    | GetVmLocationUuid
    | Unknown
)


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def decode(payload: bytes) -> VmwareCommand:  # noqa: C901
    """Decode an un-doubled option-232 subnegotiation payload (``<cmd> <args>``)."""
    if not payload:
        raise MalformedCommand("empty option-232 subnegotiation")
    code = payload[0]
    arg = payload[1:]
    if code == KNOWN_SUBOPTIONS_1 or code == KNOWN_SUBOPTIONS_2:
        return KnownSuboptions(tuple(arg), proxy=code == KNOWN_SUBOPTIONS_2)
    if code == UNKNOWN_SUBOPTION_RCVD_1 or code == UNKNOWN_SUBOPTION_RCVD_2:
        if len(arg) < 1:
            raise MalformedCommand(f"{NAMES[code]} without a code")
        return UnknownSuboptionRcvd(arg[0], proxy=code == UNKNOWN_SUBOPTION_RCVD_2)
    if code == VMOTION_BEGIN:
        return VMotionBegin(arg)
    if code == VMOTION_GOAHEAD:
        return VMotionGoahead(arg, b"")
    if code == VMOTION_NOTNOW:
        return VMotionNotNow(arg)
    if code == VMOTION_PEER:
        return VMotionPeer(arg)
    if code == VMOTION_PEER_OK:
        return VMotionPeerOk(arg)
    if code == VMOTION_COMPLETE:
        return VMotionComplete(arg)
    if code == VMOTION_ABORT:
        return VMotionAbort()
    if code == DO_PROXY:
        direction = arg[:1]
        if direction == b"S":
            return DoProxy("S", _text(arg[1:]))
        if direction == b"C":
            return DoProxy("C", _text(arg[1:]))
        raise MalformedCommand(f"DO-PROXY with bad direction {direction!r}")
    if code == WILL_PROXY:
        return WillProxy()
    if code == WONT_PROXY:
        return WontProxy()
    if code == VM_VC_UUID:
        return VmVcUuid(_text(arg))
    if code == GET_VM_VC_UUID:
        return GetVmVcUuid()
    if code == VM_NAME:
        return VmName(_text(arg))
    if code == GET_VM_NAME:
        return GetVmName()
    if code == VM_BIOS_UUID:
        return VmBiosUuid(_text(arg))
    if code == GET_VM_BIOS_UUID:
        return GetVmBiosUuid()
    if code == VM_LOCATION_UUID:
        return VmLocationUuid(_text(arg))
    if code == GET_VM_LOCATION_UUID:
        return GetVmLocationUuid()
    return Unknown(code, arg)


def encode_payload(cmd: VmwareCommand) -> bytes:  # noqa: C901
    """``<cmd> <args>`` un-doubled (what :func:`decode` takes)."""
    if isinstance(cmd, KnownSuboptions):
        code = KNOWN_SUBOPTIONS_2 if cmd.proxy else KNOWN_SUBOPTIONS_1
        return bytes((code, *cmd.codes))
    if isinstance(cmd, UnknownSuboptionRcvd):
        code = UNKNOWN_SUBOPTION_RCVD_2 if cmd.proxy else UNKNOWN_SUBOPTION_RCVD_1
        return bytes((code, cmd.code))
    if isinstance(cmd, VMotionBegin):
        return bytes((VMOTION_BEGIN,)) + cmd.seq
    if isinstance(cmd, VMotionGoahead):
        return bytes((VMOTION_GOAHEAD,)) + cmd.seq + cmd.secret
    if isinstance(cmd, VMotionNotNow):
        return bytes((VMOTION_NOTNOW,)) + cmd.seq
    if isinstance(cmd, VMotionPeer):
        return bytes((VMOTION_PEER,)) + cmd.cookie
    if isinstance(cmd, VMotionPeerOk):
        return bytes((VMOTION_PEER_OK,)) + cmd.seq
    if isinstance(cmd, VMotionComplete):
        return bytes((VMOTION_COMPLETE,)) + cmd.seq
    if isinstance(cmd, VMotionAbort):
        return bytes((VMOTION_ABORT,))
    if isinstance(cmd, DoProxy):
        if cmd.direction not in ("S", "C"):
            raise ValueError(f"DO-PROXY direction must be 'S' or 'C', not {cmd.direction!r}")
        return bytes((DO_PROXY,)) + cmd.direction.encode() + cmd.uri.encode()
    if isinstance(cmd, WillProxy):
        return bytes((WILL_PROXY,))
    if isinstance(cmd, WontProxy):
        return bytes((WONT_PROXY,))
    if isinstance(cmd, VmVcUuid):
        return bytes((VM_VC_UUID,)) + cmd.uuid.encode()
    if isinstance(cmd, GetVmVcUuid):
        return bytes((GET_VM_VC_UUID,))
    if isinstance(cmd, VmName):
        return bytes((VM_NAME,)) + cmd.name.encode()
    if isinstance(cmd, GetVmName):
        return bytes((GET_VM_NAME,))
    if isinstance(cmd, VmBiosUuid):
        return bytes((VM_BIOS_UUID,)) + cmd.uuid.encode()
    if isinstance(cmd, GetVmBiosUuid):
        return bytes((GET_VM_BIOS_UUID,))
    if isinstance(cmd, VmLocationUuid):
        return bytes((VM_LOCATION_UUID,)) + cmd.uuid.encode()
    if isinstance(cmd, GetVmLocationUuid):
        return bytes((GET_VM_LOCATION_UUID,))
    return bytes((cmd.code,)) + cmd.payload


def encode(cmd: VmwareCommand) -> bytes:
    """The full frame ``IAC SB 232 <cmd> <args> IAC SE`` with 0xFF doubled."""
    return subnegotiation(VMWARE_EXT, encode_payload(cmd))


def split_cookie(cookie: bytes, seq: bytes) -> bytes | None:
    """The secret in ``cookie`` if it starts with ``seq``, else None."""
    if len(cookie) >= len(seq) and cookie[: len(seq)] == seq:
        return cookie[len(seq) :]
    return None
