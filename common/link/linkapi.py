"""What the peer link (``common.link.peerlink``) offers and asks: its settings,
its error, and the interface of a stream handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from common.proto.link.mux import MuxConfig


class LinkDeadError(Exception):
    """The link is gone (closed, broken, silent or hostile peer)."""


@dataclass(frozen=True)
class LinkConfig:
    mux: MuxConfig = field(default_factory=MuxConfig)
    replay_limit: int = 16 * 1024 * 1024  # per stream, each direction, at each end
    replay_pool: int = 256 * 1024 * 1024  # all streams of one router / session table together
    replay_reserve: int = 64 * 1024  # per stream, always available beyond the pool
    overflow: str = "block"  # or "discard" (sources that must not be paused)
    resume_timeout: float = 60.0  # an acceptor keeps a detached session this long
    reconnect_min: float = 0.05
    reconnect_max: float = 5.0
    write_high_water: int = 2 * 1024 * 1024
    send_quantum: int = 128 * 1024  # bytes a stream may queue per round-robin turn
    read_size: int = 256 * 1024
    ack_bytes: int = 1024 * 1024  # ACK received bytes at least this often...
    ack_delay: float = 0.005  # ...and this long after the input ran dry


class StreamHandler(Protocol):
    """What a link calls for one of its streams (from the reader task; must not block)."""

    def on_data(self, offset: int, payload: bytes | bytearray) -> None: ...
    def on_ack(self, offset: int, fin: bool) -> None: ...
    def on_eof(self, offset: int) -> None: ...
    def on_reset(self, code: int, reason: str) -> None: ...
    def on_credit(self) -> None: ...
    def on_batch_end(self) -> None: ...
    def produce(self, max_bytes: int) -> bool:
        """Writer's turn: queue up to ``max_bytes`` of frames; True if more is ready."""
        ...
