"""How a ``session.Session`` is bounded and what it offers (sans-IO)."""

from __future__ import annotations

from dataclasses import dataclass

from common.proto.session.messages import CAPS, MAX_DATA
from common.proto.session.replay import Policy


@dataclass(frozen=True, slots=True)
class SessionConfig:
    replay_limit: int = 1 << 20  # bytes held per channel-stream for replay
    policy: Policy = Policy.BLOCK
    max_channels: int = 1024  # RESUME must fit one record: 2 marks of 14 bytes each
    max_data: int = MAX_DATA  # bytes per DATA record
    max_control: int = 4096  # RESIZE/SIGNAL refused while this many await their ACK
    ack_on_consume: bool = False  # ACK what ``consumed`` reported, not what arrived
    caps: int = CAPS  # capability bits offered in RESUME (fewer: act as an older peer)

    def __post_init__(self) -> None:
        if not 0 < self.max_channels <= 2000 or not 0 < self.max_data <= MAX_DATA:
            raise ValueError("max_channels must be 1..2000 and max_data 1..MAX_DATA")
