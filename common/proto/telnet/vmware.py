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

from collections.abc import Callable
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

ALL_COMMANDS: Final = frozenset(NAMES)


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


# --- the code <-> command tables ----------------------------------------------
# Commands whose argument is the rest of the payload as bytes, as text, or none
# (a payload after a command without an argument is ignored).
_BytesArg = VMotionBegin | VMotionNotNow | VMotionPeer | VMotionPeerOk | VMotionComplete
_TextArg = VmVcUuid | VmName | VmBiosUuid | VmLocationUuid
_NoArg = (
    VMotionAbort
    | WillProxy
    | WontProxy
    | GetVmVcUuid
    | GetVmName
    | GetVmBiosUuid
    | GetVmLocationUuid
)

_BYTES_ARG: Final[dict[int, type[_BytesArg]]] = {
    VMOTION_BEGIN: VMotionBegin,
    VMOTION_NOTNOW: VMotionNotNow,
    VMOTION_PEER: VMotionPeer,
    VMOTION_PEER_OK: VMotionPeerOk,
    VMOTION_COMPLETE: VMotionComplete,
}
_TEXT_ARG: Final[dict[int, type[_TextArg]]] = {
    VM_VC_UUID: VmVcUuid,
    VM_NAME: VmName,
    VM_BIOS_UUID: VmBiosUuid,
    VM_LOCATION_UUID: VmLocationUuid,
}
_NO_ARG: Final[dict[int, type[_NoArg]]] = {
    VMOTION_ABORT: VMotionAbort,
    WILL_PROXY: WillProxy,
    WONT_PROXY: WontProxy,
    GET_VM_VC_UUID: GetVmVcUuid,
    GET_VM_NAME: GetVmName,
    GET_VM_BIOS_UUID: GetVmBiosUuid,
    GET_VM_LOCATION_UUID: GetVmLocationUuid,
}


def _decode_known(code: int, arg: bytes) -> VmwareCommand:
    return KnownSuboptions(tuple(arg), proxy=code == KNOWN_SUBOPTIONS_2)


def _decode_unknown_rcvd(code: int, arg: bytes) -> VmwareCommand:
    if len(arg) < 1:
        raise MalformedCommand(f"{NAMES[code]} without a code")
    return UnknownSuboptionRcvd(arg[0], proxy=code == UNKNOWN_SUBOPTION_RCVD_2)


def _decode_goahead(code: int, arg: bytes) -> VmwareCommand:
    return VMotionGoahead(arg, b"")  # no delimiter: the whole cookie goes in seq


def _decode_do_proxy(code: int, arg: bytes) -> VmwareCommand:
    direction = arg[:1]
    if direction == b"S":
        return DoProxy("S", _text(arg[1:]))
    if direction == b"C":
        return DoProxy("C", _text(arg[1:]))
    raise MalformedCommand(f"DO-PROXY with bad direction {direction!r}")


# Commands with an argument of their own shape: code -> decoder(code, arg).
_SHAPED: Final[dict[int, Callable[[int, bytes], VmwareCommand]]] = {
    KNOWN_SUBOPTIONS_1: _decode_known,
    KNOWN_SUBOPTIONS_2: _decode_known,
    UNKNOWN_SUBOPTION_RCVD_1: _decode_unknown_rcvd,
    UNKNOWN_SUBOPTION_RCVD_2: _decode_unknown_rcvd,
    VMOTION_GOAHEAD: _decode_goahead,
    DO_PROXY: _decode_do_proxy,
}

# The code of every command whose class alone says its code.
_CODE_OF: Final[dict[type, int]] = {
    **{cls: code for code, cls in _BYTES_ARG.items()},
    **{cls: code for code, cls in _TEXT_ARG.items()},
    **{cls: code for code, cls in _NO_ARG.items()},
    VMotionGoahead: VMOTION_GOAHEAD,
    DoProxy: DO_PROXY,
}


def decode(payload: bytes) -> VmwareCommand:
    """Decode an un-doubled option-232 subnegotiation payload (``<cmd> <args>``)."""
    if not payload:
        raise MalformedCommand("empty option-232 subnegotiation")
    code = payload[0]
    arg = payload[1:]
    if code in _BYTES_ARG:
        return _BYTES_ARG[code](arg)
    if code in _TEXT_ARG:
        return _TEXT_ARG[code](_text(arg))
    if code in _NO_ARG:
        return _NO_ARG[code]()
    if code in _SHAPED:
        return _SHAPED[code](code, arg)
    return Unknown(code, arg)


def encode_payload(cmd: VmwareCommand) -> bytes:
    """``<cmd> <args>`` un-doubled (what :func:`decode` takes)."""
    if isinstance(cmd, KnownSuboptions):
        code = KNOWN_SUBOPTIONS_2 if cmd.proxy else KNOWN_SUBOPTIONS_1
        return bytes((code, *cmd.codes))
    if isinstance(cmd, UnknownSuboptionRcvd):
        code = UNKNOWN_SUBOPTION_RCVD_2 if cmd.proxy else UNKNOWN_SUBOPTION_RCVD_1
        return bytes((code, cmd.code))
    if isinstance(cmd, Unknown):
        return bytes((cmd.code,)) + cmd.payload
    return bytes((_CODE_OF[type(cmd)],)) + _argument(cmd)


def _argument(cmd: VmwareCommand) -> bytes:
    """The argument of a command whose class says its code (``b""`` if none)."""
    if isinstance(cmd, VMotionBegin | VMotionNotNow | VMotionPeerOk | VMotionComplete):
        return cmd.seq
    if isinstance(cmd, VMotionGoahead):
        return cmd.seq + cmd.secret
    if isinstance(cmd, VMotionPeer):
        return cmd.cookie
    if isinstance(cmd, VmVcUuid | VmBiosUuid | VmLocationUuid):
        return cmd.uuid.encode()
    if isinstance(cmd, VmName):
        return cmd.name.encode()
    if isinstance(cmd, DoProxy):
        if cmd.direction not in ("S", "C"):
            raise ValueError(f"DO-PROXY direction must be 'S' or 'C', not {cmd.direction!r}")
        return cmd.direction.encode() + cmd.uri.encode()
    return b""


def encode(cmd: VmwareCommand) -> bytes:
    """The full frame ``IAC SB 232 <cmd> <args> IAC SE`` with 0xFF doubled."""
    return subnegotiation(VMWARE_EXT, encode_payload(cmd))


def split_cookie(cookie: bytes, seq: bytes) -> bytes | None:
    """The secret in ``cookie`` if it starts with ``seq``, else None."""
    if len(cookie) >= len(seq) and cookie[: len(seq)] == seq:
        return cookie[len(seq) :]
    return None
