"""The console attach protocol (sans-IO).

A client connects to the console endpoint (Unix socket, or TCP with mutual TLS)
and sends ONE JSON request line:

* ``{"op": "list"}`` -> one status line ``{"ok": true, "consoles": [...]}``, then close;
* ``{"op": "attach", "vm": "<uuid|name|display|prefix>", "label": "<label>",
  "mode": "rw|ro|exclusive", "replay": N, "notices": bool}`` -> one status line
  ``{"ok": true, "uuid": ..., "label": ..., "display": ..., "mode": ...,
  "replay": R, "connected": bool}`` and then raw bytes both ways: the first R bytes
  from the server are the replay (the last R bytes the VM wrote), followed at once
  by the live stream. With ``"notices": true`` (the default) the stream also
  carries one-line notices (``\r\n[vic console: VM disconnected]\r\n``) when
  the VM goes and comes back; ``false`` gives the VM's bytes only. Input typed
  while no VM is connected is discarded with a notice to the typist either way.

* ``{"op": "exec", "v": 1, "vm": ..., "argv": [...], "tty": bool, "stdin": bool,
  "env": [[k, v], ...], "cwd": "", "user": "", "rows": R, "cols": C, "timeout": T}``
  (a tethered VM; ``timeout`` seconds or null) -> ``{"ok": true, "vm": ...}``, then
  frames both ways (``Frame``, below): the client sends STDIN (and STDIN_EOF once)
  and RESIZE; the server STDOUT, STDERR and, last, EXIT whose payload is a
  JSON object ``{"code": n}``, ``{"signal": n}`` or ``{"error": "..."}``;
* ``{"op": "logs", "v": 1, "vm": ..., "tail": N|null, "since": epoch|null,
  "follow": bool, "timestamps": bool}`` -> ``{"ok": true}``, then the container
  log in docker's multiplexed frames (8-byte header: stream 1 stdout, 2 stderr,
  3 an error that ends the logs; three zero bytes; length u32), until it ends.

* ``{"op": "session-attach", "v": 1, "vm": ..., "stdin": bool, "rows": R, "cols": C}``
  (a tethered VM's main process) -> ``{"ok": true, "vm": ...}``, then frames as
  for exec; the client closing the connection detaches (the process carries on);
  EXIT comes when the main process ends (at once if it has). A VM with no session
  is refused: the client then takes the raw console (``attach``);
* ``{"op": "rotate", "v": 1, "vm": ...}`` -> ``{"ok": true, "vm": ...}``: the VM's
  session secret is replaced; new connections use the new one.

``v`` is the request version (1 when absent); a server refuses a version it does
not know with an error, so a newer client learns it at once. ``list`` and
``attach`` are unchanged: old clients are unaffected.

Exec frames: ``type u8 | length u32 (big-endian) | payload`` (at most
``MAX_FRAME`` bytes); RESIZE is ``rows u16 | cols u16``.

Errors are ``{"ok": false, "error": "..."}`` and the connection is closed.
Lines end with ``\\n``; a request line is at most ``MAX_LINE`` bytes.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

MAX_LINE = 64 * 1024
VERSION = 1
MAX_FRAME = 64 * 1024
MAX_ARGS = 4096

Mode = Literal["rw", "ro", "exclusive"]
MODES: tuple[Mode, ...] = ("rw", "ro", "exclusive")


class ProtocolError(Exception):
    """A malformed request or status line."""


@dataclass(frozen=True)
class ListRequest:
    pass


@dataclass(frozen=True)
class AttachRequest:
    vm: str
    label: str | None = None
    mode: Mode = "rw"
    replay: int = 0
    notices: bool = True


@dataclass(frozen=True)
class ExecRequest:
    vm: str
    argv: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    user: str = ""
    rows: int = 0
    cols: int = 0
    timeout: float | None = None


@dataclass(frozen=True)
class LogsRequest:
    vm: str
    tail: int | None = None
    since: float | None = None
    follow: bool = False
    timestamps: bool = False


@dataclass(frozen=True)
class SessionAttachRequest:
    vm: str
    stdin: bool = True
    rows: int = 0
    cols: int = 0


@dataclass(frozen=True)
class RotateRequest:
    vm: str


SessionRequest = ExecRequest | LogsRequest | SessionAttachRequest | RotateRequest
Request = ListRequest | AttachRequest | SessionRequest


def encode_request(req: Request) -> bytes:
    if isinstance(req, ExecRequest):
        return encode_line({"op": "exec", "v": VERSION, **_exec_fields(req)})
    if isinstance(req, LogsRequest):
        fields = ("vm", "tail", "since", "follow", "timestamps")
        return encode_line({"op": "logs", "v": VERSION, **{k: getattr(req, k) for k in fields}})
    if isinstance(req, SessionAttachRequest):
        obj: dict[str, Any] = {"op": "session-attach", "v": VERSION, "vm": req.vm}
        return encode_line(obj | {"stdin": req.stdin, "rows": req.rows, "cols": req.cols})
    if isinstance(req, RotateRequest):
        return encode_line({"op": "rotate", "v": VERSION, "vm": req.vm})
    if isinstance(req, ListRequest):
        obj = {"op": "list"}
    else:
        obj = {"op": "attach", "vm": req.vm, "mode": req.mode, "replay": req.replay}
        if req.label is not None:
            obj["label"] = req.label
        if not req.notices:
            obj["notices"] = False
    return encode_line(obj)


def decode_request(line: bytes) -> Request:
    obj = decode_line(line)
    op = obj.get("op")
    version = obj.get("v", 1)
    if version != VERSION or isinstance(version, bool):
        raise ProtocolError(f"request version {version!r} not supported (this server: 1)")
    if op == "list":
        return ListRequest()
    if isinstance(op, str) and op in _DECODERS:
        return _DECODERS[op](obj)
    if op != "attach":
        raise ProtocolError(f"unknown op {op!r}")
    vm = obj.get("vm")
    if not isinstance(vm, str) or not vm:
        raise ProtocolError("attach needs a non-empty string 'vm'")
    label = obj.get("label")
    if label is not None and (not isinstance(label, str) or not label):
        raise ProtocolError("'label' must be a non-empty string")
    mode = obj.get("mode", "rw")
    if mode not in MODES:
        raise ProtocolError(f"'mode' must be one of {', '.join(MODES)}")
    replay = obj.get("replay", 0)
    if isinstance(replay, bool) or not isinstance(replay, int) or replay < 0:
        raise ProtocolError("'replay' must be an integer >= 0")
    notices = obj.get("notices", True)
    if not isinstance(notices, bool):
        raise ProtocolError("'notices' must be true or false")
    return AttachRequest(vm=vm, label=label, mode=mode, replay=replay, notices=notices)


def _exec_fields(req: ExecRequest) -> dict[str, Any]:
    return {
        "vm": req.vm,
        "argv": list(req.argv),
        "tty": req.tty,
        "stdin": req.stdin,
        "env": [list(kv) for kv in req.env],
        "cwd": req.cwd,
        "user": req.user,
        "rows": req.rows,
        "cols": req.cols,
        "timeout": req.timeout,
    }


def _vm(obj: dict[str, Any]) -> str:
    vm = obj.get("vm")
    if not isinstance(vm, str) or not vm:
        raise ProtocolError(f"{obj.get('op')} needs a non-empty string 'vm'")
    return vm


def _flag(obj: dict[str, Any], key: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"{key!r} must be true or false")
    return value


def _int(obj: dict[str, Any], key: str, top: int, default: int | None = 0) -> int | None:
    value = obj.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise ProtocolError(f"{key!r} must be an integer 0..{top}")
    return value


def _number(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e12:
        raise ProtocolError(f"{key!r} must be a number >= 0 or null")
    return float(value)


def _strings(value: Any, key: str, *, empty: bool = True) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_ARGS or (not empty and not value):
        raise ProtocolError(f"{key!r} must be a list of strings")
    if not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{key!r} must be a list of strings")
    return tuple(value)


def _decode_exec(obj: dict[str, Any]) -> ExecRequest:
    argv = _strings(obj.get("argv"), "argv", empty=False)
    env_raw = obj.get("env", [])
    if not isinstance(env_raw, list) or len(env_raw) > MAX_ARGS:
        raise ProtocolError("'env' must be a list of [name, value]")
    env = tuple(_strings(kv, "env") for kv in env_raw)
    if any(len(kv) != 2 or not kv[0] for kv in env):
        raise ProtocolError("'env' must be a list of [name, value]")
    cwd, user = obj.get("cwd", ""), obj.get("user", "")
    if not isinstance(cwd, str) or not isinstance(user, str):
        raise ProtocolError("'cwd' and 'user' must be strings")
    return ExecRequest(
        vm=_vm(obj),
        argv=argv,
        tty=_flag(obj, "tty"),
        stdin=_flag(obj, "stdin"),
        env=tuple((k, v) for k, v in env),
        cwd=cwd,
        user=user,
        rows=_int(obj, "rows", 0xFFFF) or 0,
        cols=_int(obj, "cols", 0xFFFF) or 0,
        timeout=_number(obj, "timeout"),
    )


def _decode_logs(obj: dict[str, Any]) -> LogsRequest:
    return LogsRequest(
        vm=_vm(obj),
        tail=_int(obj, "tail", 1 << 31, default=None),
        since=_number(obj, "since"),
        follow=_flag(obj, "follow"),
        timestamps=_flag(obj, "timestamps"),
    )


def _decode_session_attach(obj: dict[str, Any]) -> SessionAttachRequest:
    rows, cols = _int(obj, "rows", 0xFFFF) or 0, _int(obj, "cols", 0xFFFF) or 0
    return SessionAttachRequest(_vm(obj), _flag(obj, "stdin"), rows, cols)


def _decode_rotate(obj: dict[str, Any]) -> RotateRequest:
    return RotateRequest(_vm(obj))


_DECODERS: dict[str, Callable[[dict[str, Any]], Request]] = {
    "exec": _decode_exec,
    "logs": _decode_logs,
    "session-attach": _decode_session_attach,
    "rotate": _decode_rotate,
}


# ---------------------------------------------------------------- exec frames
class FrameType(enum.IntEnum):
    STDIN = 0x01
    STDIN_EOF = 0x02
    RESIZE = 0x03
    STDOUT = 0x11
    STDERR = 0x12
    EXIT = 0x13


_FRAME_HEADER = struct.Struct(">BI")
LOGS_ERROR_STREAM = 3


def logs_error_frame(message: str) -> bytes:
    """The docker-shaped frame that ends a LOGS answer with an error."""
    body = message.encode("utf-8", "replace")[:MAX_FRAME]
    return struct.pack(">BxxxI", LOGS_ERROR_STREAM, len(body)) + body


@dataclass(frozen=True)
class Frame:
    type: FrameType
    payload: bytes = b""


def encode_frame(ftype: FrameType, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame payload over {MAX_FRAME} bytes")
    return _FRAME_HEADER.pack(ftype, len(payload)) + payload


def resize_frame(rows: int, cols: int) -> bytes:
    return encode_frame(FrameType.RESIZE, struct.pack(">HH", rows, cols))


def exit_frame(*, code: int | None = None, signal: int | None = None, error: str = "") -> bytes:
    obj: dict[str, Any] = {"error": error} if error else {}
    if code is not None:
        obj["code"] = code
    if signal is not None:
        obj["signal"] = signal
    return encode_frame(FrameType.EXIT, encode_line(obj))


def parse_resize(payload: bytes) -> tuple[int, int]:
    if len(payload) != 4:
        raise ProtocolError("RESIZE takes 4 bytes")
    rows, cols = struct.unpack(">HH", payload)
    return rows, cols


class FrameReader:
    """Exec frames from bytes: ``feed`` returns the whole frames so far. An unknown
    type or a payload over ``MAX_FRAME`` raises ProtocolError at its header."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        while len(self._buf) >= _FRAME_HEADER.size:
            ftype, length = _FRAME_HEADER.unpack_from(self._buf)
            if ftype not in FrameType._value2member_map_:
                raise ProtocolError(f"unknown frame type {ftype:#x}")
            if length > MAX_FRAME:
                raise ProtocolError(f"frame of {length} bytes (max {MAX_FRAME})")
            end = _FRAME_HEADER.size + length
            if len(self._buf) < end:
                break
            out.append(Frame(FrameType(ftype), bytes(self._buf[_FRAME_HEADER.size : end])))
            del self._buf[:end]
        return out


def encode_line(obj: dict[str, Any]) -> bytes:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (argv bytes that are not UTF-8): escaped
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def decode_line(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"not a JSON line: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("expected a JSON object")
    return obj


class LineReader:
    """Collects bytes until the first ``\\n``; keeps what follows it."""

    __slots__ = ("_buf", "_limit")

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes | bytearray) -> tuple[bytes, bytes] | None:
        """Returns ``(line_without_newline, rest)`` once a line is complete, else None.

        Raises ProtocolError when the line grows past the limit.
        """
        start = len(self._buf)
        self._buf += data
        i = self._buf.find(b"\n", start)
        if i < 0:
            if len(self._buf) > self._limit:
                raise ProtocolError(f"line longer than {self._limit} bytes")
            return None
        if i > self._limit:
            raise ProtocolError(f"line longer than {self._limit} bytes")
        line = bytes(self._buf[:i])
        rest = bytes(self._buf[i + 1 :])
        self._buf.clear()
        return line, rest
