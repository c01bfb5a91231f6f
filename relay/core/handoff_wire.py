"""The live-stream part of a relay handoff (relay.handoff), sans-IO.

After the successor says ``ready`` the old relay stops each movable pump at a
safe point (relay.pump_freeze) and passes its two connected sockets, the VM side
and the appliance side, with what the successor needs to carry the stream on.
On the handoff connection, between ``ready`` and ``released``::

    {"streams": [STATE, ...], "fds": N}\\n   (+ SCM_RIGHTS: vm0, app0, vm1, ...)
    REPLAY0 PENDING0 REPLAY1 ...            (raw bytes, lengths declared in the line)

one line per batch of at most ``per_batch(max_fds)`` streams, the fds riding with
the line's bytes; then ``released``. A STATE is ``StreamState.to_json()``. A
stream whose egress is a resumable stream on a peer link passes one fd (its VM
side) and its session instead (``Resumed``: the session id, the origin header,
the offsets; its replay bytes and the bytes received but not yet written to the
VM follow the line, in stream order, their lengths in ``STATE["resume"]``).

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

from common.proto.link.resume_export import SessionImage

FDS_PER_STREAM = 2  # the VM side, then the appliance side (a resumed stream: the VM side)
MAX_LINE = 1 << 20  # a batch of 125 states is ~40 KB
MAX_BYTES = 1 << 30  # replay and pending bytes following one line (the sender keeps it
# far lower: ``byte_batches``)
RELEASED = b"released"

T = TypeVar("T")


class WireCode(Enum):
    TOO_LONG = "too_long"
    NOT_JSON = "not_json"
    BAD_STATE = "bad_state"
    FD_COUNT = "fd_count"
    UNEXPECTED = "unexpected"
    TOO_BIG = "too_big"


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


_IMAGE_INTS = ("acked", "max_sent", "recv_offset", "handed", "floor")


@dataclass(frozen=True, slots=True)
class Resumed:
    """A resumable peer-link stream passed with its session (no appliance-side fd)."""

    session_id: bytes
    header: bytes  # the origin header its OPEN carries
    image: SessionImage

    def to_json(self) -> dict[str, Any]:
        img = self.image
        head: dict[str, Any] = {k: getattr(img, k) for k in _IMAGE_INTS}
        head |= {"session": self.session_id.hex(), "header": self.header.hex()}
        return head | {"replay": len(img.replay), "pending": len(img.pending)}

    @property
    def blob(self) -> bytes:
        return self.image.replay + self.image.pending


@dataclass(frozen=True, slots=True)
class Continued:
    """A stream whose TLS egress ended in the old relay: one fd (its VM side); the
    successor continues it at the appliance from its state's byte counts
    (relay.pump_tls). On the wire: ``STATE["continue"] = true``."""


CONTINUED = Continued()
Passed = Resumed | Continued | None


@dataclass(frozen=True, slots=True)
class _ResumeHead:
    """A ``Resumed`` as its line declares it, before its bytes arrived."""

    session_id: bytes
    header: bytes
    ints: tuple[int, ...]
    replay: int
    pending: int

    @classmethod
    def from_json(cls, obj: object) -> _ResumeHead:
        if not isinstance(obj, dict):
            raise WireError(WireCode.BAD_STATE, "resume: not an object")
        ints = tuple(obj.get(k) for k in (*_IMAGE_INTS, "replay", "pending"))
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            raise WireError(WireCode.BAD_STATE, "resume: offsets")
        try:
            sid, header = bytes.fromhex(obj["session"]), bytes.fromhex(obj["header"])
        except (KeyError, TypeError, ValueError):
            raise WireError(WireCode.BAD_STATE, "resume: session or header") from None
        n = len(_IMAGE_INTS)
        return cls(sid, header, ints[:n], ints[n], ints[n + 1])  # type: ignore[arg-type]

    def complete(self, blob: bytes) -> Resumed:
        replay, pending = blob[: self.replay], blob[self.replay :]
        acked, max_sent, recv_offset, handed, floor = self.ints
        img = SessionImage(acked, max_sent, replay, recv_offset, handed, floor, pending)
        try:
            img.check()
        except ValueError:
            raise WireError(WireCode.BAD_STATE, "resume: offsets do not add up") from None
        return Resumed(self.session_id, self.header, img)


_Head = _ResumeHead | Continued | None


def _head(item: Any) -> _Head:
    """What follows a passed stream's state: its session, a continuation, or nothing."""
    if not isinstance(item, dict):
        return None  # (StreamState.from_json refused it already)
    if "resume" in item:
        return _ResumeHead.from_json(item["resume"])
    if item.get("continue") is True:
        return CONTINUED
    return None


def per_batch(max_fds: int) -> int:
    """Streams in one message when a message carries at most ``max_fds`` fds."""
    return max(1, max_fds // FDS_PER_STREAM)


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def encode_batch(states: Sequence[StreamState], resumed: Sequence[Passed] | None = None) -> bytes:
    """The line that carries ``states`` and the bytes after it; send it with their
    fds (vm, app, vm, app... ; a resumed stream: its vm side only)."""
    res = list(resumed) if resumed is not None else [None] * len(states)
    items = []
    for st, r in zip(states, res, strict=True):
        obj = st.to_json()
        if isinstance(r, Resumed):
            obj["resume"] = r.to_json()
        elif r is not None:
            obj["continue"] = True
        items.append(obj)
    nfds = sum(1 if r is not None else FDS_PER_STREAM for r in res)
    body = {"streams": items, "fds": nfds}
    line = json.dumps(body, separators=(",", ":")).encode() + b"\n"
    return line + b"".join(r.blob for r in res if isinstance(r, Resumed))


@dataclass(frozen=True, slots=True)
class Batch:
    """Streams passed over; ``fds[i]`` is (vm side, appliance side) of ``states[i]``,
    or (vm side,) with its session in ``resumed[i]`` (or ``CONTINUED`` there)."""

    states: tuple[StreamState, ...]
    fds: tuple[tuple[int, ...], ...]
    resumed: tuple[Passed, ...] = ()


@dataclass(frozen=True, slots=True)
class Released:
    """The old relay let go: nothing more comes."""


Event = Batch | Released


class Receiver:
    """The successor's side, from ``ready`` on: ``feed(data, fds)`` -> events."""

    def __init__(self, max_line: int = MAX_LINE, max_bytes: int = MAX_BYTES) -> None:
        self.max_line = max_line
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._fds: list[int] = []
        # a line read, waiting for the bytes it declared
        self._head: tuple[tuple[StreamState, ...], tuple[_Head, ...]] | None = None
        self._want = 0
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
            if self._head is not None:
                if len(self._buf) < self._want:
                    break
                out.append(self._complete())
                continue
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_line:
                    raise WireError(WireCode.TOO_LONG, f"{len(self._buf)} bytes without a newline")
                break
            line = bytes(self._buf[:nl]).strip()
            del self._buf[: nl + 1]
            ev = self._line(line)
            if ev is not None:
                out.append(ev)
        return out

    def _line(self, line: bytes) -> Event | None:
        if line == RELEASED:
            self.done = True
            return Released()
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            raise WireError(WireCode.NOT_JSON, str(e)) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("streams"), list):
            raise WireError(WireCode.UNEXPECTED, "no streams list")
        items = obj["streams"]
        states = tuple(StreamState.from_json(s) for s in items)
        heads = tuple(_head(s) for s in items)
        want = sum(h.replay + h.pending for h in heads if isinstance(h, _ResumeHead))
        if want > self.max_bytes:
            raise WireError(WireCode.TOO_BIG, f"{want} bytes of sessions in one batch")
        n = sum(1 if h is not None else FDS_PER_STREAM for h in heads)
        if obj.get("fds") != n or len(self._fds) < n:
            raise WireError(WireCode.FD_COUNT, f"{len(self._fds)} fds for {len(states)} streams")
        self._head, self._want = (states, heads), want
        return self._complete() if len(self._buf) >= want else None

    def _complete(self) -> Batch:
        assert self._head is not None
        states, heads = self._head
        blob, self._head = bytes(self._buf[: self._want]), None
        del self._buf[: self._want]
        fds: list[tuple[int, ...]] = []
        resumed: list[Passed] = []
        pos = 0
        for h in heads:
            k = 1 if h is not None else FDS_PER_STREAM
            fds.append(tuple(self._fds[:k]))
            del self._fds[:k]
            if not isinstance(h, _ResumeHead):
                resumed.append(h)
                continue
            size = h.replay + h.pending
            resumed.append(h.complete(blob[pos : pos + size]))
            pos += size
        return Batch(states, tuple(fds), tuple(resumed))
