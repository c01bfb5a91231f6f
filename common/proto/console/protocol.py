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

Errors are ``{"ok": false, "error": "..."}`` and the connection is closed.
Lines end with ``\\n``; a request line is at most ``MAX_LINE`` bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

MAX_LINE = 64 * 1024

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


Request = ListRequest | AttachRequest


def encode_request(req: Request) -> bytes:
    if isinstance(req, ListRequest):
        obj: dict[str, Any] = {"op": "list"}
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
    if op == "list":
        return ListRequest()
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


def encode_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


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
