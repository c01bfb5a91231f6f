"""Why a sealed connection was refused: the codes of ``Refused`` and of the ALERT frame."""

from __future__ import annotations

import enum

__all__ = ["Refusal", "SecureError", "SecureUsageError"]


class SecureError(enum.IntEnum):
    """The reason a sealed connection closed; sent to the peer as an ALERT's code byte.

    Every code ends that one connection only: the session above resumes on the next.
    """

    NO_SYNC = 1  # more junk than allowed and no sync marker in it
    MALFORMED = 2  # a frame that breaks the grammar (type, length, payload encoding)
    AUTH = 3  # the handshake did not authenticate: wrong secret, or a forged message
    VERSION = 4  # no protocol version both ends speak
    TAMPERED = 5  # a record that does not open under its sequence number
    REPLAYED = 6  # a genuine record with a sequence number already seen
    REORDERED = 7  # a genuine record ahead of the next sequence number (one went missing)
    OVERSIZE = 8  # a frame longer than the limit for its type
    TRUNCATED = 9  # the stream ended inside a frame


class SecureUsageError(RuntimeError):
    """The caller used a ``SecureChannel`` out of turn (a bug here, not on the wire)."""


class Refusal(Exception):
    """Raised inside the core when a connection must close; becomes a ``Refused`` event."""

    def __init__(self, code: SecureError, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason
