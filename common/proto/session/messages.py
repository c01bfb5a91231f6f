"""The session layer's messages and their binary codec (sans-IO).

One message is one plaintext record of the sealed transport (at most ``MAX_RECORD``
bytes). All integers are big-endian. Every message starts with a two-byte header::

    type:u8  flags:u8  body...

``flags`` bit 0 (``OPTIONAL``) says "a receiver that does not know this type may ignore
it"; a receiver that meets an unknown type without that bit refuses the message
(``ErrorCode.UNKNOWN_TYPE``). Other flag bits are reserved: sent as 0, ignored.

Strings are ``len:u16`` then UTF-8 (``surrogateescape``, so any byte string a Linux
argv or environment holds survives); lists are ``count:u16`` then their items.

Control messages (reliable, in order, numbered per direction by ``seq``)::

    0x10 OPEN_EXEC    seq:u64 ch:u32 tty:u8 rows:u16 cols:u16 timeout_ms:u32
                      argv:list[str] env:list[(str, str)] cwd:str user:str
    0x11 OPEN_ATTACH  seq:u64 ch:u32 tty:u8 [rows:u16 cols:u16: only to CAP_ATTACH_SIZE]
    0x12 OPENED       seq:u64 ch:u32
    0x13 OPEN_FAILED  seq:u64 ch:u32 reason:str
    0x14 RESIZE       seq:u64 ch:u32 rows:u16 cols:u16
    0x15 SIGNAL       seq:u64 ch:u32 signo:u8
    0x16 EXIT         seq:u64 ch:u32 kind:u8 (0 code, 1 signal; +2 timed out) value:i32
    0x17 CLOSE        seq:u64 ch:u32

Stream messages (``stream``: 1 STDIN, 2 STDOUT, 3 STDERR, 4 TTY; 0 CONTROL only in ACK
and in RESUME marks, with ch 0, where the offset counts control messages)::

    0x20 DATA   ch:u32 stream:u8 offset:u64 bytes...   (the rest of the record)
    0x21 EOF    ch:u32 stream:u8 offset:u64
    0x22 GAP    ch:u32 stream:u8 start:u64 end:u64      (start < end)
    0x23 ACK    ch:u32 stream:u8 eof:u8 offset:u64     (cumulative)

Session::

    0x01 RESUME version:u16 caps:u32 session_id:16 bytes ctl_received:u64
                count:u16 then count x (ch:u32 stream:u8 eof:u8 offset:u64)

``decode`` raises ``MessageError`` (with an ``ErrorCode``) on anything malformed and
never anything else; it returns None for an unknown optional message.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass

VERSION = 1
MIN_VERSION = 1
CAP_EXIT_TIMED_OUT = 0x1  # EXIT kind may carry +2 "timed out": sent only to a peer offering it
CAP_ATTACH_SIZE = 0x2  # OPEN_ATTACH may carry the pty's size: sent only to a peer offering it
CAPS = CAP_EXIT_TIMED_OUT | CAP_ATTACH_SIZE  # capability bits this implementation offers
MAX_RECORD = 64 * 1024
SESSION_ID_LEN = 16
OPTIONAL = 0x01
DATA_HEADER = 2 + 4 + 1 + 8
MAX_DATA = MAX_RECORD - DATA_HEADER
U64_MAX = (1 << 64) - 1


class ErrorCode(enum.IntEnum):
    """Why a record or a connection was refused."""

    TRUNCATED = 1
    TRAILING = 2
    UNKNOWN_TYPE = 3
    BAD_FIELD = 4
    TOO_LARGE = 5
    UNEXPECTED = 10  # a message not allowed in this session state
    SEQUENCE = 11  # a control message skipped ahead
    OFFSET = 12  # a stream offset beyond what was sent or inconsistent
    UNKNOWN_CHANNEL = 13
    CHANNEL_STATE = 14  # a channel message its state does not allow
    SESSION_MISMATCH = 15
    VERSION = 16
    TOO_MANY_CHANNELS = 17


class MessageError(Exception):
    """A malformed message; ``code`` says how."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code.name}: {detail}")
        self.code = code
        self.detail = detail


class Stream(enum.IntEnum):
    CONTROL = 0
    STDIN = 1
    STDOUT = 2
    STDERR = 3
    TTY = 4


class MsgType(enum.IntEnum):
    RESUME = 0x01
    OPEN_EXEC = 0x10
    OPEN_ATTACH = 0x11
    OPENED = 0x12
    OPEN_FAILED = 0x13
    RESIZE = 0x14
    SIGNAL = 0x15
    EXIT = 0x16
    CLOSE = 0x17
    DATA = 0x20
    EOF = 0x21
    GAP = 0x22
    ACK = 0x23


@dataclass(frozen=True, slots=True)
class ExecSpec:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    user: str = ""
    tty: bool = False
    rows: int = 0
    cols: int = 0
    timeout_ms: int = 0  # 0: no timeout


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended: ``code`` (exit status) or ``signal`` (the signal number)."""

    code: int | None = None
    signal: int | None = None
    timed_out: bool = False  # killed by the exec's timeout (if the peer offers the cap)


@dataclass(frozen=True, slots=True)
class StreamMark:
    ch: int
    stream: Stream
    offset: int
    eof: bool


@dataclass(frozen=True, slots=True)
class Resume:
    version: int
    caps: int
    session_id: bytes
    ctl_received: int
    marks: tuple[StreamMark, ...]


@dataclass(frozen=True, slots=True)
class OpenExec:
    seq: int
    ch: int
    spec: ExecSpec


@dataclass(frozen=True, slots=True)
class OpenAttach:
    seq: int
    ch: int
    tty: bool
    rows: int = 0  # the pty's size to start with (0: keep it), for a CAP_ATTACH_SIZE peer
    cols: int = 0


@dataclass(frozen=True, slots=True)
class Opened:
    seq: int
    ch: int


@dataclass(frozen=True, slots=True)
class OpenFailed:
    seq: int
    ch: int
    reason: str


@dataclass(frozen=True, slots=True)
class Resize:
    seq: int
    ch: int
    rows: int
    cols: int


@dataclass(frozen=True, slots=True)
class Signal:
    seq: int
    ch: int
    signo: int


@dataclass(frozen=True, slots=True)
class Exit:
    seq: int
    ch: int
    status: ExitStatus


@dataclass(frozen=True, slots=True)
class Close:
    seq: int
    ch: int


@dataclass(frozen=True, slots=True)
class DataMsg:
    ch: int
    stream: Stream
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class EofMsg:
    ch: int
    stream: Stream
    offset: int


@dataclass(frozen=True, slots=True)
class GapMsg:
    ch: int
    stream: Stream
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Ack:
    ch: int
    stream: Stream
    offset: int
    eof: bool


Control = OpenExec | OpenAttach | Opened | OpenFailed | Resize | Signal | Exit | Close
Message = Resume | Control | DataMsg | EofMsg | GapMsg | Ack

_HDR = struct.Struct(">BB")
_U16 = struct.Struct(">H")
_SEQ_CH = struct.Struct(">QI")
_CH_STREAM_OFF = struct.Struct(">IBQ")
_GAP = struct.Struct(">IBQQ")
_ACK = struct.Struct(">IBBQ")
_MARK = _ACK
_RESUME = struct.Struct(">HI16sQH")
_EXEC = struct.Struct(">BHHI")
_EXIT = struct.Struct(">Bi")
_RESIZE = struct.Struct(">HH")
_BYTE = struct.Struct(">B")


# ---------------------------------------------------------------- encoding
def _str(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return _U16.pack(len(raw)) + raw


def _strs(values: tuple[str, ...]) -> bytes:
    if len(values) > 0xFFFF:
        raise ValueError("more than 65535 strings")
    return _U16.pack(len(values)) + b"".join(_str(v) for v in values)


def _encode_exec(spec: ExecSpec) -> bytes:
    if len(spec.env) > 0xFFFF:
        raise ValueError("more than 65535 environment entries")
    env = b"".join(_str(k) + _str(v) for k, v in spec.env)
    return b"".join(
        (
            _EXEC.pack(int(spec.tty), spec.rows, spec.cols, spec.timeout_ms),
            _strs(spec.argv),
            _U16.pack(len(spec.env)) + env,
            _str(spec.cwd),
            _str(spec.user),
        )
    )


def _encode_exit(status: ExitStatus, caps: int) -> bytes:
    if (status.code is None) == (status.signal is None):
        raise ValueError("an exit status is a code or a signal")
    late = 2 if status.timed_out and caps & CAP_EXIT_TIMED_OUT else 0
    if status.signal is not None:
        return _EXIT.pack(1 | late, status.signal)
    assert status.code is not None
    return _EXIT.pack(late, status.code)


def _body(msg: Message, caps: int) -> tuple[MsgType, bytes]:  # noqa: C901 - one arm per type
    match msg:
        case Resume():
            head = _RESUME.pack(
                msg.version, msg.caps, msg.session_id, msg.ctl_received, len(msg.marks)
            )
            marks = (_MARK.pack(m.ch, m.stream, int(m.eof), m.offset) for m in msg.marks)
            return MsgType.RESUME, head + b"".join(marks)
        case OpenExec():
            return MsgType.OPEN_EXEC, _SEQ_CH.pack(msg.seq, msg.ch) + _encode_exec(msg.spec)
        case OpenAttach():
            size = _RESIZE.pack(msg.rows, msg.cols) if caps & CAP_ATTACH_SIZE else b""
            return MsgType.OPEN_ATTACH, _SEQ_CH.pack(msg.seq, msg.ch) + bytes([msg.tty]) + size
        case Opened():
            return MsgType.OPENED, _SEQ_CH.pack(msg.seq, msg.ch)
        case OpenFailed():
            return MsgType.OPEN_FAILED, _SEQ_CH.pack(msg.seq, msg.ch) + _str(msg.reason)
        case Resize():
            return MsgType.RESIZE, _SEQ_CH.pack(msg.seq, msg.ch) + _RESIZE.pack(msg.rows, msg.cols)
        case Signal():
            return MsgType.SIGNAL, _SEQ_CH.pack(msg.seq, msg.ch) + bytes([msg.signo])
        case Exit():
            return MsgType.EXIT, _SEQ_CH.pack(msg.seq, msg.ch) + _encode_exit(msg.status, caps)
        case Close():
            return MsgType.CLOSE, _SEQ_CH.pack(msg.seq, msg.ch)
        case DataMsg():
            return MsgType.DATA, _CH_STREAM_OFF.pack(msg.ch, msg.stream, msg.offset) + msg.data
        case EofMsg():
            return MsgType.EOF, _CH_STREAM_OFF.pack(msg.ch, msg.stream, msg.offset)
        case GapMsg():
            return MsgType.GAP, _GAP.pack(msg.ch, msg.stream, msg.start, msg.end)
        case Ack():
            return MsgType.ACK, _ACK.pack(msg.ch, msg.stream, int(msg.eof), msg.offset)
    raise TypeError(f"not a session message: {msg!r}")


def encode(msg: Message, *, optional: bool = False, caps: int = CAPS) -> bytes:
    """One record of ``msg`` for a peer offering ``caps``; ValueError: a field out of range."""
    try:
        kind, body = _body(msg, caps)
    except struct.error as e:
        raise ValueError(f"field out of range in {type(msg).__name__}: {e}") from None
    record = _HDR.pack(kind, OPTIONAL if optional else 0) + body
    if len(record) > MAX_RECORD:
        raise ValueError(f"{kind.name} of {len(record)} bytes exceeds a record")
    return record


# ---------------------------------------------------------------- decoding
class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: struct.Struct) -> tuple[int | bytes, ...]:
        end = self.pos + fmt.size
        if end > len(self.buf):
            raise MessageError(ErrorCode.TRUNCATED, f"needs {end} bytes, has {len(self.buf)}")
        values = fmt.unpack_from(self.buf, self.pos)
        self.pos = end
        return tuple(values)

    def ints(self, fmt: struct.Struct) -> tuple[int, ...]:
        return tuple(int(v) for v in self.take(fmt) if isinstance(v, int))

    def string(self) -> str:
        (n,) = self.ints(_U16)
        end = self.pos + n
        if end > len(self.buf):
            raise MessageError(ErrorCode.TRUNCATED, "string runs past the record")
        raw = self.buf[self.pos : end]
        self.pos = end
        return raw.decode("utf-8", "surrogateescape")

    def strings(self) -> tuple[str, ...]:
        (n,) = self.ints(_U16)
        return tuple(self.string() for _ in range(n))

    def rest(self) -> bytes:
        raw = self.buf[self.pos :]
        self.pos = len(self.buf)
        return raw

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise MessageError(ErrorCode.TRAILING, f"{len(self.buf) - self.pos} bytes left over")


def _flag(value: int) -> bool:
    if value > 1:
        raise MessageError(ErrorCode.BAD_FIELD, f"flag byte {value}")
    return value == 1


def _stream(value: int, *, control: bool = False) -> Stream:
    if value > Stream.TTY or (value == Stream.CONTROL and not control):
        raise MessageError(ErrorCode.BAD_FIELD, f"stream {value}")
    return Stream(value)


def _d_resume(r: _Reader) -> Resume:
    version, caps, sid, ctl, n = r.take(_RESUME)
    assert isinstance(sid, bytes)
    marks = []
    for _ in range(int(n)):
        ch, stream, eof, offset = r.ints(_MARK)
        marks.append(StreamMark(ch, _stream(stream, control=True), offset, _flag(eof)))
    return Resume(int(version), int(caps), sid, int(ctl), tuple(marks))


def _d_exec(r: _Reader) -> OpenExec:
    seq, ch = r.ints(_SEQ_CH)
    tty, rows, cols, timeout_ms = r.ints(_EXEC)
    argv = r.strings()
    (n,) = r.ints(_U16)
    env = tuple((r.string(), r.string()) for _ in range(n))
    cwd, user = r.string(), r.string()
    spec = ExecSpec(argv, env, cwd, user, _flag(tty), rows, cols, timeout_ms)
    return OpenExec(seq, ch, spec)


def _d_attach(r: _Reader) -> OpenAttach:
    seq, ch = r.ints(_SEQ_CH)
    tty = _flag(_byte(r))
    rows, cols = r.ints(_RESIZE) if r.pos < len(r.buf) else (0, 0)  # an older peer's: no size
    return OpenAttach(seq, ch, tty, rows, cols)


def _byte(r: _Reader) -> int:
    (b,) = r.ints(_BYTE)
    return b


def _d_exit(r: _Reader) -> Exit:
    seq, ch = r.ints(_SEQ_CH)
    kind, value = r.ints(_EXIT)
    late = bool(kind & 2)
    if kind & ~2 == 0:
        return Exit(seq, ch, ExitStatus(code=value, timed_out=late))
    if kind & ~2 == 1 and value > 0:
        return Exit(seq, ch, ExitStatus(signal=value, timed_out=late))
    raise MessageError(ErrorCode.BAD_FIELD, f"exit kind {kind} value {value}")


def _d_gap(r: _Reader) -> GapMsg:
    ch, stream, start, end = r.ints(_GAP)
    if start >= end:
        raise MessageError(ErrorCode.BAD_FIELD, f"empty gap [{start}, {end})")
    return GapMsg(ch, _stream(stream), start, end)


def _d_ack(r: _Reader) -> Ack:
    ch, stream, eof, offset = r.ints(_ACK)
    return Ack(ch, _stream(stream, control=True), offset, _flag(eof))


def _seq_ch(r: _Reader) -> tuple[int, int]:
    seq, ch = r.ints(_SEQ_CH)
    return seq, ch


def _d_data(r: _Reader) -> DataMsg:
    ch, stream, offset = r.ints(_CH_STREAM_OFF)
    return DataMsg(ch, _stream(stream), offset, r.rest())


def _d_eof(r: _Reader) -> EofMsg:
    ch, stream, offset = r.ints(_CH_STREAM_OFF)
    return EofMsg(ch, _stream(stream), offset)


_DECODERS: dict[int, Callable[[_Reader], Message]] = {
    MsgType.RESUME: _d_resume,
    MsgType.OPEN_EXEC: _d_exec,
    MsgType.OPEN_ATTACH: _d_attach,
    MsgType.OPENED: lambda r: Opened(*_seq_ch(r)),
    MsgType.OPEN_FAILED: lambda r: OpenFailed(*_seq_ch(r), r.string()),
    MsgType.RESIZE: lambda r: Resize(*_seq_ch(r), *r.ints(_RESIZE)),
    MsgType.SIGNAL: lambda r: Signal(*_seq_ch(r), _byte(r)),
    MsgType.EXIT: _d_exit,
    MsgType.CLOSE: lambda r: Close(*_seq_ch(r)),
    MsgType.DATA: _d_data,
    MsgType.EOF: _d_eof,
    MsgType.GAP: _d_gap,
    MsgType.ACK: _d_ack,
}


def decode(record: bytes) -> Message | None:
    """The message in ``record``; None if it is of an unknown type flagged optional."""
    if len(record) > MAX_RECORD:
        raise MessageError(ErrorCode.TOO_LARGE, f"record of {len(record)} bytes")
    r = _Reader(bytes(record))
    kind, flags = r.ints(_HDR)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        if flags & OPTIONAL:
            return None
        raise MessageError(ErrorCode.UNKNOWN_TYPE, f"message type 0x{kind:02x}")
    msg = decoder(r)
    r.end()
    return msg
