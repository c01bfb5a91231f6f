"""Which session the peer's RESUME names, and whether this end can resume it (sans-IO).

The appliance names the session; the tether adopts the id from the first RESUME it
gets (sending zeros until then) when that RESUME says nothing of the tether's ever
reached the appliance (no control message taken, every stream mark at 0). Any other
id, or zeros from a peer when something of the peer's was taken or acknowledged here
before, is ``SESSION_MISMATCH``: the peer lost the session (it restarted).

A tether with no session that gets a RESUME claiming its messages (the tether restarted
under a live appliance session) cannot resume it and has nothing to refuse with but its
own RESUME: ``identify`` returns None, the session goes to UNKNOWN, ignores the rest of
the connection and keeps its RESUME (zeros) going out. The appliance meets the zeros
and raises ``SESSION_MISMATCH`` on that first connection, then starts a new session,
which the tether adopts on the next one.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.proto.session.messages import SESSION_ID_LEN, ErrorCode, MessageError, Resume

__all__ = ["NO_SESSION", "identify"]

NO_SESSION = bytes(SESSION_ID_LEN)


def holds_nothing(msg: Resume) -> bool:
    """The peer's RESUME says nothing of ours ever reached it."""
    return msg.ctl_received == 0 and all(m.offset == 0 and not m.eof for m in msg.marks)


def identify(own: bytes | None, msg: Resume, taken: Iterable[int]) -> bytes | None:
    """The session id to hold after ``msg``; None: a session this end never had.

    ``taken``: how much of the peer's this end holds (control messages taken and
    acknowledged, stream offsets); all zero means a peer naming no session is fine.
    """
    sid = msg.session_id
    if own is None:
        if sid == NO_SESSION:
            raise MessageError(ErrorCode.SESSION_MISMATCH, "neither end names a session")
        return sid if holds_nothing(msg) else None
    if sid == NO_SESSION and any(taken):
        raise MessageError(ErrorCode.SESSION_MISMATCH, "the peer lost the session")
    if sid not in (NO_SESSION, own):
        raise MessageError(ErrorCode.SESSION_MISMATCH, "the peer holds another session")
    return own
