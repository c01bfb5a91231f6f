"""Peer-link frame codec (sans-IO).

Every frame is a 10-byte header followed by a payload::

    type u8 | flags u8 | stream_id u32 | length u32 | payload[length]

all big-endian. ``length`` is bounded by the decoder's ``max_payload`` (the
link's negotiated maximum, never more than ``MAX_PAYLOAD_LIMIT``), so a hostile
peer cannot make us buffer more than one bounded frame. Anything malformed
(unknown type, bad length for its type, stream id 0 where a stream is needed,
oversize frame) raises ``LinkProtocolError``; the link that sent it is closed.

Frame types:

=========  ==  =========================================================
HELLO       0  magic ``VICL``, version u8, max_payload u32  (stream 0)
OPEN        1  session_id 16B, recv_offset u64, [start u64,] header bytes;
               flag RESUME, or flag CONTINUE (then ``start`` is present)
DATA        2  offset u64, data
WINDOW      3  increment u32 (credit for DATA bytes on that stream)
ACK         4  offset u64 (bytes received end to end); flag FIN (EOF seen)
EOF         5  final offset u64
RESET       6  code u16, reason utf-8
PING        7  8 opaque bytes (stream 0)
PONG        8  the PING's 8 bytes (stream 0)
GOAWAY      9  last_stream_id u32, code u16, reason utf-8 (stream 0)
=========  ==  =========================================================

A CONTINUE OPEN starts a new session that carries on an old one whose far end
was lost (the acceptor restarted and answered UNKNOWN_SESSION): its bytes are
numbered from ``start`` (the opener's first unacknowledged offset) and the
acceptor's from ``recv_offset`` (what the opener has received), so no byte is
dropped or sent twice across the two sessions.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HEADER = struct.Struct("!BBII")
HEADER_SIZE = HEADER.size
MAGIC = b"VICL"
VERSION = 1
MAX_PAYLOAD_LIMIT = 1 << 20  # hard ceiling for any link
DEFAULT_MAX_PAYLOAD = 256 * 1024 + 8  # a DATA frame carries up to 256 KiB
MAX_OPEN_HEADER = 16 * 1024
MAX_REASON = 1024
MAX_STREAM_ID = (1 << 32) - 1
MAX_OFFSET = (1 << 63) - 1
MAX_WINDOW_INCREMENT = (1 << 31) - 1

_U64 = struct.Struct("!Q")
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_HELLO = struct.Struct("!4sBI")
_OPEN = struct.Struct("!16sQ")
_GOAWAY = struct.Struct("!IH")
_DATA_HDR = struct.Struct("!BBIIQ")


class LinkProtocolError(Exception):
    """The peer broke the link protocol; the link must be closed."""


class FrameType(enum.IntEnum):
    HELLO = 0
    OPEN = 1
    DATA = 2
    WINDOW = 3
    ACK = 4
    EOF = 5
    RESET = 6
    PING = 7
    PONG = 8
    GOAWAY = 9


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0
    PROTOCOL = 1
    GAP = 2
    UNKNOWN_SESSION = 3
    REFUSED = 4
    CANCEL = 5
    TIMEOUT = 6
    INTERNAL = 7
    FLOW_CONTROL = 8
    SUPERSEDED = 9


FLAG_RESUME = 0x01  # OPEN: re-attach an existing session
FLAG_CONTINUE = 0x02  # OPEN: a new session that carries on a lost one
FLAG_FIN = 0x01  # ACK: the EOF at this offset was received too


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    max_payload: int


@dataclass(frozen=True, slots=True)
class Open:
    stream_id: int
    session_id: bytes
    recv_offset: int
    header: bytes
    resume: bool = False
    continues: int | None = None  # CONTINUE: the offset of the opener's first byte


@dataclass(frozen=True, slots=True)
class Data:
    stream_id: int
    offset: int
    payload: bytes | bytearray


@dataclass(frozen=True, slots=True)
class Window:
    stream_id: int
    increment: int


@dataclass(frozen=True, slots=True)
class Ack:
    stream_id: int
    offset: int
    fin: bool = False


@dataclass(frozen=True, slots=True)
class Eof:
    stream_id: int
    offset: int


@dataclass(frozen=True, slots=True)
class Reset:
    stream_id: int
    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Ping:
    opaque: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    opaque: bytes


@dataclass(frozen=True, slots=True)
class GoAway:
    last_stream_id: int
    code: int
    reason: str = ""


Frame = Hello | Open | Data | Window | Ack | Eof | Reset | Ping | Pong | GoAway


def _hdr(ftype: FrameType, flags: int, stream_id: int, payload: bytes) -> bytes:
    return HEADER.pack(ftype, flags, stream_id, len(payload)) + payload


def _reason(reason: str) -> bytes:
    raw = reason.encode("utf-8", "replace")[:MAX_REASON]
    # Never cut a multi-byte character in half.
    return raw.decode("utf-8", "ignore").encode("utf-8")


def data_header(stream_id: int, offset: int, length: int) -> bytes:
    """Header for a DATA frame whose ``length`` payload bytes the caller sends next."""
    return _DATA_HDR.pack(FrameType.DATA, 0, stream_id, length + 8, offset)


def _encode_data(frame: Data) -> bytes:
    _check_sid(frame.stream_id)
    _check_off(frame.offset)
    return data_header(frame.stream_id, frame.offset, len(frame.payload)) + frame.payload


def _encode_hello(frame: Hello) -> bytes:
    return _hdr(FrameType.HELLO, 0, 0, _HELLO.pack(MAGIC, frame.version, frame.max_payload))


def _encode_open(frame: Open) -> bytes:
    _check_sid(frame.stream_id)
    _check_off(frame.recv_offset)
    if len(frame.session_id) != 16:
        raise ValueError("session_id must be 16 bytes")
    if len(frame.header) > MAX_OPEN_HEADER:
        raise ValueError("origin header too long")
    payload = _OPEN.pack(frame.session_id, frame.recv_offset)
    flags = FLAG_RESUME if frame.resume else 0
    if frame.continues is not None:
        if frame.resume:
            raise ValueError("an OPEN cannot both resume and continue")
        _check_off(frame.continues)
        payload += _U64.pack(frame.continues)
        flags |= FLAG_CONTINUE
    return _hdr(FrameType.OPEN, flags, frame.stream_id, payload + frame.header)


def _encode_window(frame: Window) -> bytes:
    _check_sid(frame.stream_id)
    if not 0 < frame.increment <= MAX_WINDOW_INCREMENT:
        raise ValueError("window increment out of range")
    return _hdr(FrameType.WINDOW, 0, frame.stream_id, _U32.pack(frame.increment))


def _encode_ack(frame: Ack) -> bytes:
    _check_sid(frame.stream_id)
    _check_off(frame.offset)
    return _hdr(
        FrameType.ACK, FLAG_FIN if frame.fin else 0, frame.stream_id, _U64.pack(frame.offset)
    )


def _encode_eof(frame: Eof) -> bytes:
    _check_sid(frame.stream_id)
    _check_off(frame.offset)
    return _hdr(FrameType.EOF, 0, frame.stream_id, _U64.pack(frame.offset))


def _encode_reset(frame: Reset) -> bytes:
    _check_sid(frame.stream_id)
    return _hdr(FrameType.RESET, 0, frame.stream_id, _U16.pack(frame.code) + _reason(frame.reason))


def _encode_ping(frame: Ping) -> bytes:
    if len(frame.opaque) != 8:
        raise ValueError("ping payload must be 8 bytes")
    return _hdr(FrameType.PING, 0, 0, frame.opaque)


def _encode_pong(frame: Pong) -> bytes:
    if len(frame.opaque) != 8:
        raise ValueError("pong payload must be 8 bytes")
    return _hdr(FrameType.PONG, 0, 0, frame.opaque)


def _encode_goaway(frame: GoAway) -> bytes:
    if not 0 <= frame.last_stream_id <= MAX_STREAM_ID:
        raise ValueError("last_stream_id out of range")
    payload = _GOAWAY.pack(frame.last_stream_id, frame.code) + _reason(frame.reason)
    return _hdr(FrameType.GOAWAY, 0, 0, payload)


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    Data: _encode_data,
    Hello: _encode_hello,
    Open: _encode_open,
    Window: _encode_window,
    Ack: _encode_ack,
    Eof: _encode_eof,
    Reset: _encode_reset,
    Ping: _encode_ping,
    Pong: _encode_pong,
    GoAway: _encode_goaway,
}


def encode(frame: Frame) -> bytes:
    """Encode one frame; raises ValueError for values that cannot be represented."""
    encoder = _ENCODERS.get(type(frame))
    if encoder is None:
        raise TypeError(f"not a frame: {frame!r}")
    return encoder(frame)


def _check_sid(sid: int) -> None:
    if not 0 < sid <= MAX_STREAM_ID:
        raise ValueError("stream id must be 1..2**32-1")


def _check_off(off: int) -> None:
    if not 0 <= off <= MAX_OFFSET:
        raise ValueError("offset out of range")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LinkProtocolError("reason is not UTF-8") from None


def _decode_continue(
    sid: int, flags: int, session_id: bytes, recv_offset: int, payload: bytes
) -> Open:
    if flags & FLAG_RESUME:
        raise LinkProtocolError("OPEN both resumes and continues")
    if len(payload) < _OPEN.size + 8:
        raise LinkProtocolError("bad OPEN length (CONTINUE without its offset)")
    start = _U64.unpack_from(payload, _OPEN.size)[0]
    if start > MAX_OFFSET:
        raise LinkProtocolError("OPEN continue offset out of range")
    return Open(sid, session_id, recv_offset, payload[_OPEN.size + 8 :], False, start)


def _decode_data(t: FrameType, flags: int, sid: int, payload: bytes) -> Frame:
    if len(payload) < 8:
        raise LinkProtocolError("DATA frame too short")
    off = _U64.unpack_from(payload)[0]
    if off > MAX_OFFSET:
        raise LinkProtocolError("DATA offset out of range")
    return Data(sid, off, payload[8:])


def _decode_hello(t: FrameType, flags: int, sid: int, payload: bytes) -> Frame:
    if len(payload) != _HELLO.size:
        raise LinkProtocolError("bad HELLO length")
    magic, version, max_payload = _HELLO.unpack(payload)
    if magic != MAGIC:
        raise LinkProtocolError("bad HELLO magic (not a vic peer link)")
    return Hello(version, max_payload)


def _decode_open(t: FrameType, flags: int, sid: int, payload: bytes) -> Frame:
    n = len(payload)
    if n < _OPEN.size or n > _OPEN.size + 8 + MAX_OPEN_HEADER:
        raise LinkProtocolError("bad OPEN length")
    session_id, recv_offset = _OPEN.unpack_from(payload)
    if recv_offset > MAX_OFFSET:
        raise LinkProtocolError("OPEN offset out of range")
    if not flags & FLAG_CONTINUE:
        return Open(sid, session_id, recv_offset, payload[_OPEN.size :], bool(flags & FLAG_RESUME))
    return _decode_continue(sid, flags, session_id, recv_offset, payload)


def _decode_window(t: FrameType, flags: int, sid: int, payload: bytes) -> Frame:
    if len(payload) != 4:
        raise LinkProtocolError("bad WINDOW length")
    inc = _U32.unpack(payload)[0]
    if not 0 < inc <= MAX_WINDOW_INCREMENT:
        raise LinkProtocolError("WINDOW increment out of range")
    return Window(sid, inc)


def _decode_offset(t: FrameType, flags: int, sid: int, payload: bytes) -> Frame:
    """ACK or EOF: one offset."""
    if len(payload) != 8:
        raise LinkProtocolError(f"bad {t.name} length")
    off = _U64.unpack(payload)[0]
    if off > MAX_OFFSET:
        raise LinkProtocolError(f"{t.name} offset out of range")
    if t is FrameType.ACK:
        return Ack(sid, off, bool(flags & FLAG_FIN))
    return Eof(sid, off)


def _decode_reset(t: FrameType, flags: int, sid: int, payload: bytes) -> Frame:
    if len(payload) < 2 or len(payload) > 2 + MAX_REASON:
        raise LinkProtocolError("bad RESET length")
    return Reset(sid, _U16.unpack_from(payload)[0], _text(payload[2:]))


def _decode_ping(t: FrameType, flags: int, sid: int, payload: bytes) -> Frame:
    """PING or PONG: 8 opaque bytes."""
    if len(payload) != 8:
        raise LinkProtocolError(f"bad {t.name} length")
    return Ping(payload) if t is FrameType.PING else Pong(payload)


def _decode_goaway(t: FrameType, flags: int, sid: int, payload: bytes) -> Frame:
    if len(payload) < _GOAWAY.size or len(payload) > _GOAWAY.size + MAX_REASON:
        raise LinkProtocolError("bad GOAWAY length")
    last, code = _GOAWAY.unpack_from(payload)
    return GoAway(last, code, _text(payload[_GOAWAY.size :]))


_DECODERS: dict[FrameType, Callable[[FrameType, int, int, bytes], Frame]] = {
    FrameType.HELLO: _decode_hello,
    FrameType.OPEN: _decode_open,
    FrameType.DATA: _decode_data,
    FrameType.WINDOW: _decode_window,
    FrameType.ACK: _decode_offset,
    FrameType.EOF: _decode_offset,
    FrameType.RESET: _decode_reset,
    FrameType.PING: _decode_ping,
    FrameType.PONG: _decode_ping,
    FrameType.GOAWAY: _decode_goaway,
}
_CONN_LEVEL = frozenset({FrameType.HELLO, FrameType.PING, FrameType.PONG, FrameType.GOAWAY})


def decode_payload(ftype: int, flags: int, sid: int, payload: bytes) -> Frame:
    """Build the frame for a complete header + payload; raise LinkProtocolError if bad."""
    try:
        t = FrameType(ftype)
    except ValueError:
        raise LinkProtocolError(f"unknown frame type {ftype}") from None
    conn_level = t in _CONN_LEVEL
    if conn_level and sid != 0:
        raise LinkProtocolError(f"{t.name} on stream {sid}, must be stream 0")
    if not conn_level and sid == 0:
        raise LinkProtocolError(f"{t.name} on stream 0")
    return _DECODERS[t](t, flags, sid, payload)


PENDING_MIN = 16 * 1024  # DATA payloads at least this big are assembled in place
