"""The live-stream part of a relay handoff (relay.handoff), sans-IO.

After the successor says ``ready`` the old relay stops each movable pump at a
safe point (relay.pump_freeze) and passes its two connected sockets, the VM side
and the appliance side, with what the successor needs to carry the stream on.
On the handoff connection, between ``ready`` and ``released``::

    {"streams": [STATE, ...], "fds": 2 * len(streams)}\\n   (+ SCM_RIGHTS: vm0, app0, vm1, ...)

one line per batch of at most ``per_batch(max_fds)`` streams, the fds riding with
the line's bytes; then ``released``. A STATE is ``StreamState.to_json()``.

``Receiver`` is the successor's side: bytes and fds in (in arrival order),
``Batch`` and ``Released`` events out. Bad input is a ``WireError`` carrying a
code; the adapter closes every fd it was given and stops reading.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any, TypeVar

FDS_PER_STREAM = 2  # the VM side, then the appliance side
MAX_LINE = 1 << 20  # a batch of 125 states is ~40 KB
RELEASED = b"released"

T = TypeVar("T")


class WireCode(Enum):
    TOO_LONG = "too_long"
    NOT_JSON = "not_json"
    BAD_STATE = "bad_state"
    FD_COUNT = "fd_count"
    UNEXPECTED = "unexpected"


class WireError(Exception):
    def __init__(self, code: WireCode, detail: str) -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code


@dataclass(frozen=True, slots=True)
class StreamState:
    """What a successor needs to carry a live stream on (its sockets apart)."""

    sid: str  # the stream id, kept across processes
    route: str  # the listener (metrics route) it came in on
    kind: str  # the ingress kind: tcp, unix, vsock, ...
    vm: str
    label: str
    peer: str  # who connected (for the log lines)
    egress: str  # the egress kind it reaches the appliance by
    a_to_b: int  # bytes delivered so far, VM -> appliance
    b_to_a: int  # and appliance -> VM

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: object) -> StreamState:
        if not isinstance(obj, dict):
            raise WireError(WireCode.BAD_STATE, "not an object")
        values: dict[str, Any] = {}
        for f in fields(cls):
            v = obj.get(f.name)
            if f.type in (int, "int"):
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
            else:
                ok = isinstance(v, str)
            if not ok:
                raise WireError(WireCode.BAD_STATE, f"field {f.name!r}")
            values[f.name] = v
        return cls(**values)


def per_batch(max_fds: int) -> int:
    """Streams in one message when a message carries at most ``max_fds`` fds."""
    return max(1, max_fds // FDS_PER_STREAM)


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def encode_batch(states: Sequence[StreamState]) -> bytes:
    """The line that carries ``states``; send it with their fds (vm, app, vm, app...)."""
    body = {"streams": [s.to_json() for s in states], "fds": FDS_PER_STREAM * len(states)}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class Batch:
    """Streams passed over; ``fds[i]`` is (vm side, appliance side) of ``states[i]``."""

    states: tuple[StreamState, ...]
    fds: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Released:
    """The old relay let go: nothing more comes."""


Event = Batch | Released


class Receiver:
    """The successor's side, from ``ready`` on: ``feed(data, fds)`` -> events."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._fds: list[int] = []
        self.done = False

    @property
    def held_fds(self) -> list[int]:
        """Fds received and not yet handed out in a Batch (to close on an error)."""
        return list(self._fds)

    def feed(self, data: bytes, fds: Sequence[int] = ()) -> list[Event]:
        self._fds.extend(fds)
        self._buf += data
        out: list[Event] = []
        while not self.done:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_line:
                    raise WireError(WireCode.TOO_LONG, f"{len(self._buf)} bytes without a newline")
                break
            line = bytes(self._buf[:nl]).strip()
            del self._buf[: nl + 1]
            out.append(self._line(line))
        return out

    def _line(self, line: bytes) -> Event:
        if line == RELEASED:
            self.done = True
            return Released()
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            raise WireError(WireCode.NOT_JSON, str(e)) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("streams"), list):
            raise WireError(WireCode.UNEXPECTED, "no streams list")
        states = tuple(StreamState.from_json(s) for s in obj["streams"])
        n = FDS_PER_STREAM * len(states)
        if obj.get("fds") != n or len(self._fds) < n:
            raise WireError(WireCode.FD_COUNT, f"{len(self._fds)} fds for {len(states)} streams")
        taken, self._fds = self._fds[:n], self._fds[n:]
        pairs = tuple((taken[i], taken[i + 1]) for i in range(0, n, FDS_PER_STREAM))
        return Batch(states, pairs)
