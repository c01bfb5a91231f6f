"""``docker exec`` in the Docker Engine API, sans-IO: the create and start bodies,
the inspect shape, the table of exec instances (bounded; the oldest finished go
first)."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from vspc.core.docker_api import DockerError

MAX_EXECS = 1024
MAX_ARGS = 4096


def _json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise DockerError(400, "invalid JSON body") from None
    if not isinstance(data, dict):
        raise DockerError(400, "the body must be a JSON object")
    return data


def _strings(data: dict[str, Any], key: str) -> tuple[str, ...]:
    v = data.get(key) or []
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v) or len(v) > MAX_ARGS:
        raise DockerError(400, f"{key} must be a list of strings")
    return tuple(v)


def _console_size(d: dict[str, Any]) -> tuple[int, int]:
    size = d.get("ConsoleSize") or [0, 0]
    ok = isinstance(size, list) and len(size) == 2
    if not ok or not all(isinstance(n, int) and 0 <= n < 65536 for n in size):
        raise DockerError(400, "ConsoleSize must be [rows, cols]")
    return size[0], size[1]


@dataclass(frozen=True)
class ExecConfig:
    cmd: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True
    cwd: str = ""
    user: str = ""
    size: tuple[int, int] = (0, 0)  # rows, cols

    @classmethod
    def from_body(cls, body: bytes) -> ExecConfig:
        d = _json(body)
        cmd = _strings(d, "Cmd")
        if not cmd:
            raise DockerError(400, "No exec command specified")
        env = []
        for item in _strings(d, "Env"):
            k, sep, v = item.partition("=")
            if not k:
                raise DockerError(400, f"invalid environment entry {item[:40]!r}")
            env.append((k, v if sep else ""))
        return cls(
            cmd=cmd,
            env=tuple(env),
            tty=d.get("Tty") is True,
            stdin=d.get("AttachStdin") is True,
            stdout=d.get("AttachStdout") is not False,
            stderr=d.get("AttachStderr") is not False,
            cwd=str(d.get("WorkingDir") or ""),
            user=str(d.get("User") or ""),
            size=_console_size(d),
        )


@dataclass(frozen=True)
class StartConfig:
    detach: bool = False
    tty: bool = False
    size: tuple[int, int] = (0, 0)  # rows, cols

    @classmethod
    def from_body(cls, body: bytes) -> StartConfig:
        d = _json(body)
        return cls(d.get("Detach") is True, d.get("Tty") is True, _console_size(d))


@dataclass
class ExecInstance:
    id: str
    container_id: str
    vm: str
    config: ExecConfig
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def inspect(self) -> dict[str, Any]:
        c = self.config
        return {
            "ID": self.id,
            "Running": self.running,
            "ExitCode": self.exit_code,
            "ProcessConfig": {
                "tty": c.tty,
                "entrypoint": c.cmd[0],
                "arguments": list(c.cmd[1:]),
                "user": c.user,
                "privileged": False,
            },
            "OpenStdin": c.stdin,
            "OpenStderr": c.stderr,
            "OpenStdout": c.stdout,
            "CanRemove": False,
            "ContainerID": self.container_id,
            "DetachKeys": "",
            "Pid": 0,
        }


class ExecTable:
    """Exec instances by id; at most ``limit``, finished ones dropped oldest first."""

    def __init__(self, limit: int = MAX_EXECS) -> None:
        self.limit = limit
        self._by_id: OrderedDict[str, ExecInstance] = OrderedDict()

    def add(self, inst: ExecInstance) -> None:
        while len(self._by_id) >= self.limit:
            old = next((k for k, v in self._by_id.items() if not v.running), None)
            if old is None:
                raise DockerError(503, f"{self.limit} exec instances running already")
            del self._by_id[old]
        self._by_id[inst.id] = inst

    def get(self, exec_id: str) -> ExecInstance:
        inst = self._by_id.get(exec_id)
        if inst is None:
            raise DockerError(404, f"No such exec instance: {exec_id[:80]}")
        return inst


DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p ctrl-q
_CTRL = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(text: str) -> bytes:
    """Docker's ``--detach-keys``: comma-separated ``ctrl-<a-z@[\\]^_>`` or single
    characters; empty is the default (ctrl-p ctrl-q)."""
    if text == "":
        return DEFAULT_DETACH_KEYS
    out = bytearray()
    for key in text.split(","):
        k = key.strip().lower()
        if len(key) == 1:
            out.append(ord(key) & 0x7F)
        elif k.startswith("ctrl-") and len(k) == 6 and "a" <= k[5] <= "z":
            out.append(ord(k[5]) - ord("a") + 1)
        elif k.startswith("ctrl-") and len(k) == 6 and k[5] in _CTRL:
            out.append(_CTRL[k[5]])
        else:
            raise DockerError(400, f"Invalid detach keys ({text[:40]}) provided")
    return bytes(out)


class DetachScanner:
    """Input in, input to forward out; ``detached`` once the key sequence went by.

    Bytes that may begin the sequence are held back until it completes (they are
    then dropped, with everything after) or breaks (they are forwarded)."""

    def __init__(self, keys: bytes = DEFAULT_DETACH_KEYS) -> None:
        self.keys = keys
        self.detached = False
        self._held = 0  # how many bytes of ``keys`` matched so far

    def feed(self, data: bytes) -> bytes:
        if self.detached or not self.keys:
            return b"" if self.detached else data
        out = bytearray()
        for b in data:
            if b == self.keys[self._held]:
                self._held += 1
                if self._held == len(self.keys):
                    self.detached = True
                    return bytes(out)
                continue
            out += self.keys[: self._held]
            self._held = 1 if b == self.keys[0] else 0
            if self._held == 0:
                out.append(b)
        return bytes(out)
