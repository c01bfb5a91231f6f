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
from dataclasses import dataclass

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


_MAX_TYPE = max(FrameType)
_DATA = int(FrameType.DATA)

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


def encode(frame: Frame) -> bytes:  # noqa: C901
    """Encode one frame; raises ValueError for values that cannot be represented."""
    if isinstance(frame, Data):
        _check_sid(frame.stream_id)
        _check_off(frame.offset)
        return data_header(frame.stream_id, frame.offset, len(frame.payload)) + frame.payload
    if isinstance(frame, Hello):
        return _hdr(FrameType.HELLO, 0, 0, _HELLO.pack(MAGIC, frame.version, frame.max_payload))
    if isinstance(frame, Open):
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
    if isinstance(frame, Window):
        _check_sid(frame.stream_id)
        if not 0 < frame.increment <= MAX_WINDOW_INCREMENT:
            raise ValueError("window increment out of range")
        return _hdr(FrameType.WINDOW, 0, frame.stream_id, _U32.pack(frame.increment))
    if isinstance(frame, Ack):
        _check_sid(frame.stream_id)
        _check_off(frame.offset)
        return _hdr(
            FrameType.ACK, FLAG_FIN if frame.fin else 0, frame.stream_id, _U64.pack(frame.offset)
        )
    if isinstance(frame, Eof):
        _check_sid(frame.stream_id)
        _check_off(frame.offset)
        return _hdr(FrameType.EOF, 0, frame.stream_id, _U64.pack(frame.offset))
    if isinstance(frame, Reset):
        _check_sid(frame.stream_id)
        return _hdr(
            FrameType.RESET, 0, frame.stream_id, _U16.pack(frame.code) + _reason(frame.reason)
        )
    if isinstance(frame, Ping):
        if len(frame.opaque) != 8:
            raise ValueError("ping payload must be 8 bytes")
        return _hdr(FrameType.PING, 0, 0, frame.opaque)
    if isinstance(frame, Pong):
        if len(frame.opaque) != 8:
            raise ValueError("pong payload must be 8 bytes")
        return _hdr(FrameType.PONG, 0, 0, frame.opaque)
    if isinstance(frame, GoAway):
        if not 0 <= frame.last_stream_id <= MAX_STREAM_ID:
            raise ValueError("last_stream_id out of range")
        return _hdr(
            FrameType.GOAWAY,
            0,
            0,
            _GOAWAY.pack(frame.last_stream_id, frame.code) + _reason(frame.reason),
        )
    raise TypeError(f"not a frame: {frame!r}")


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


def decode_payload(ftype: int, flags: int, sid: int, payload: bytes) -> Frame:  # noqa: C901
    """Build the frame for a complete header + payload; raise LinkProtocolError if bad."""
    n = len(payload)
    try:
        t = FrameType(ftype)
    except ValueError:
        raise LinkProtocolError(f"unknown frame type {ftype}") from None
    conn_level = t in (FrameType.HELLO, FrameType.PING, FrameType.PONG, FrameType.GOAWAY)
    if conn_level and sid != 0:
        raise LinkProtocolError(f"{t.name} on stream {sid}, must be stream 0")
    if not conn_level and sid == 0:
        raise LinkProtocolError(f"{t.name} on stream 0")
    if t is FrameType.DATA:
        if n < 8:
            raise LinkProtocolError("DATA frame too short")
        off = _U64.unpack_from(payload)[0]
        if off > MAX_OFFSET:
            raise LinkProtocolError("DATA offset out of range")
        return Data(sid, off, payload[8:])
    if t is FrameType.HELLO:
        if n != _HELLO.size:
            raise LinkProtocolError("bad HELLO length")
        magic, version, max_payload = _HELLO.unpack(payload)
        if magic != MAGIC:
            raise LinkProtocolError("bad HELLO magic (not a vic peer link)")
        return Hello(version, max_payload)
    if t is FrameType.OPEN:
        if n < _OPEN.size or n > _OPEN.size + 8 + MAX_OPEN_HEADER:
            raise LinkProtocolError("bad OPEN length")
        session_id, recv_offset = _OPEN.unpack_from(payload)
        if recv_offset > MAX_OFFSET:
            raise LinkProtocolError("OPEN offset out of range")
        if not flags & FLAG_CONTINUE:
            return Open(
                sid, session_id, recv_offset, payload[_OPEN.size :], bool(flags & FLAG_RESUME)
            )
        return _decode_continue(sid, flags, session_id, recv_offset, payload)
    if t is FrameType.WINDOW:
        if n != 4:
            raise LinkProtocolError("bad WINDOW length")
        inc = _U32.unpack(payload)[0]
        if not 0 < inc <= MAX_WINDOW_INCREMENT:
            raise LinkProtocolError("WINDOW increment out of range")
        return Window(sid, inc)
    if t in (FrameType.ACK, FrameType.EOF):
        if n != 8:
            raise LinkProtocolError(f"bad {t.name} length")
        off = _U64.unpack(payload)[0]
        if off > MAX_OFFSET:
            raise LinkProtocolError(f"{t.name} offset out of range")
        if t is FrameType.ACK:
            return Ack(sid, off, bool(flags & FLAG_FIN))
        return Eof(sid, off)
    if t is FrameType.RESET:
        if n < 2 or n > 2 + MAX_REASON:
            raise LinkProtocolError("bad RESET length")
        return Reset(sid, _U16.unpack_from(payload)[0], _text(payload[2:]))
    if t in (FrameType.PING, FrameType.PONG):
        if n != 8:
            raise LinkProtocolError(f"bad {t.name} length")
        return Ping(payload) if t is FrameType.PING else Pong(payload)
    # GOAWAY
    if n < _GOAWAY.size or n > _GOAWAY.size + MAX_REASON:
        raise LinkProtocolError("bad GOAWAY length")
    last, code = _GOAWAY.unpack_from(payload)
    return GoAway(last, code, _text(payload[_GOAWAY.size :]))


PENDING_MIN = 16 * 1024  # DATA payloads at least this big are assembled in place


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the complete frames so far.

    Memory is bounded by one frame (``HEADER_SIZE + max_payload``). Large DATA
    payloads that span reads are assembled directly into their own buffer
    (handed out as a ``bytearray``), so each payload byte is copied once; the
    caller may reuse the buffer it fed. After a ``LinkProtocolError`` the decoder
    is dead and raises again on every feed.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if not 0 < max_payload <= MAX_PAYLOAD_LIMIT + 8:
            raise ValueError("max_payload out of range")
        self.max_payload = max_payload
        self._buf = bytearray()  # a partial frame (header straddling reads, or small)
        # a large DATA payload being filled: [stream_id, offset, payload, filled]
        self._pending: tuple[int, int, bytearray] | None = None
        self._filled = 0
        self._error: LinkProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf) + (self._filled if self._pending is not None else 0)

    def receive_buffer(self) -> memoryview | None:
        """The unfilled rest of a large DATA payload being assembled, if any.

        The caller may receive straight into it (no copy through its own read
        buffer) and then report the count with ``filled(n)``; None when the next
        bytes start a new frame (use ``feed``).
        """
        if self._pending is None or self._error is not None:
            return None
        return memoryview(self._pending[2])[self._filled :]

    def filled(self, n: int) -> list[Frame]:
        """``n`` bytes were written into ``receive_buffer()``; the frames completed by them."""
        if self._error is not None:
            raise self._error
        pending = self._pending
        if pending is None:
            if n:
                raise ValueError("filled() without a receive buffer")
            return []
        sid, off, pay = pending
        if not 0 <= n <= len(pay) - self._filled:
            raise ValueError("filled() beyond the receive buffer")
        self._filled += n
        if self._filled < len(pay):
            return []
        self._pending = None
        return [Data(sid, off, pay)]

    def _header(self, buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, int, int]:
        ftype, flags, sid, length = HEADER.unpack_from(buf, pos)
        if length > self.max_payload:
            raise LinkProtocolError(
                f"frame of {length} bytes exceeds the limit of {self.max_payload}"
            )
        if ftype > _MAX_TYPE:
            raise LinkProtocolError(f"unknown frame type {ftype}")
        return ftype, flags, sid, length

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if self._error is not None:
            raise self._error
        try:
            with memoryview(data) as mv:
                return self._feed(mv.cast("B") if mv.format != "B" else mv)
        except LinkProtocolError as e:
            self._error = e
            self._buf = bytearray()
            self._pending = None
            raise

    def _feed(self, mv: memoryview) -> list[Frame]:  # noqa: C901
        frames: list[Frame] = []
        n = len(mv)
        i = 0
        if self._pending is not None:
            sid, off, pay = self._pending
            k = min(len(pay) - self._filled, n)
            pay[self._filled : self._filled + k] = mv[:k]
            self._filled += k
            i = k
            if self._filled < len(pay):
                return frames
            frames.append(Data(sid, off, pay))
            self._pending = None
        if self._buf:
            buf = self._buf
            if len(buf) < HEADER_SIZE:
                k = min(HEADER_SIZE - len(buf), n - i)
                buf += mv[i : i + k]
                i += k
                if len(buf) < HEADER_SIZE:
                    return frames
            ftype, flags, sid, length = self._header(buf, 0)
            total = HEADER_SIZE + length
            k = min(total - len(buf), n - i)
            buf += mv[i : i + k]
            i += k
            if len(buf) < total:
                return frames
            frames.append(decode_payload(ftype, flags, sid, bytes(buf[HEADER_SIZE:])))
            self._buf = bytearray()
        while n - i >= HEADER_SIZE:
            ftype, flags, sid, length = self._header(mv, i)
            stop = i + HEADER_SIZE + length
            is_data = ftype == _DATA and sid != 0 and length >= 8
            if stop <= n:
                if is_data:
                    off = _U64.unpack_from(mv, i + HEADER_SIZE)[0]
                    if off > MAX_OFFSET:
                        raise LinkProtocolError("DATA offset out of range")
                    frames.append(Data(sid, off, bytes(mv[i + HEADER_SIZE + 8 : stop])))
                else:
                    frames.append(
                        decode_payload(ftype, flags, sid, bytes(mv[i + HEADER_SIZE : stop]))
                    )
                i = stop
                continue
            if is_data and length - 8 >= PENDING_MIN and n - i >= HEADER_SIZE + 8:
                off = _U64.unpack_from(mv, i + HEADER_SIZE)[0]
                if off > MAX_OFFSET:
                    raise LinkProtocolError("DATA offset out of range")
                pay = bytearray(length - 8)
                k = n - (i + HEADER_SIZE + 8)
                pay[:k] = mv[i + HEADER_SIZE + 8 : n]
                self._pending = (sid, off, pay)
                self._filled = k
                return frames
            break
        if i < n:
            self._buf = bytearray(mv[i:n])
        return frames
