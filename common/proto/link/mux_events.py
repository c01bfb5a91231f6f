"""What ``common.proto.link.mux.Mux.receive_data`` hands its user (h11-style events)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamOpened:
    stream_id: int
    session_id: bytes
    recv_offset: int
    header: bytes
    resume: bool
    continues: int | None = None  # a CONTINUE OPEN: the offset of the opener's first byte


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    offset: int
    payload: bytes | bytearray


@dataclass(frozen=True, slots=True)
class AckReceived:
    stream_id: int
    offset: int
    fin: bool


@dataclass(frozen=True, slots=True)
class EofReceived:
    stream_id: int
    offset: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class CreditAvailable:
    stream_id: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    last_stream_id: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class PongReceived:
    rtt: float
    seq: int = 0


Event = (
    StreamOpened
    | DataReceived
    | AckReceived
    | EofReceived
    | StreamReset
    | CreditAvailable
    | GoAwayReceived
    | PongReceived
)
