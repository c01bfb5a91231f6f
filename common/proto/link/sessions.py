"""The acceptor's session table decisions (sans-IO).

An acceptor keeps its sessions by session id, shared by all its links, plus
tombstones of finished ones (so a late resume learns how the session ended
instead of "unknown"). ``SessionDirectory.judge`` decides what an OPEN means;
the adapter (``common.link.sessions.SessionTable``) carries the verdict out.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from common.proto.link.frames import ErrorCode


class Owned(Protocol):
    @property
    def peer_identity(self) -> str: ...


S = TypeVar("S", bound=Owned)


class Verdict(enum.Enum):
    NEW = "new"  # a new session: accept it (if the backlog has room)
    ATTACH = "attach"  # re-attach the known session on this stream
    ENDED = "ended"  # the session finished: answer with how (tombstone)
    REFUSE = "refuse"  # reset the stream with ``code``/``reason``


@dataclass(frozen=True, slots=True)
class Tomb:
    """How a finished session ended."""

    recv_offset: int
    eof_received: bool
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Decision(Generic[S]):
    verdict: Verdict
    session: S | None = None  # ATTACH: the session; REFUSE of a foreign resume: its owner
    tomb: Tomb | None = None  # ENDED
    code: int = ErrorCode.NO_ERROR  # REFUSE
    reason: str = ""  # REFUSE


class SessionDirectory(Generic[S]):
    def __init__(self, tombstones: int = 4096) -> None:
        self.sessions: dict[bytes, S] = {}
        self._tombs: OrderedDict[bytes, Tomb] = OrderedDict()
        self._max_tombs = tombstones

    def judge(self, session_id: bytes, resume: bool, peer_identity: str) -> Decision[S]:
        """What an OPEN for ``session_id`` from ``peer_identity`` means."""
        st = self.sessions.get(session_id)
        # An OPEN without the RESUME flag for a session we have, from the same peer,
        # is the opener's retry after a link died before our first ACK reached it
        # (it cannot know we got the OPEN): treat it as a resume. Session ids are 16
        # random bytes, so it is never another stream.
        retry = not resume and st is not None and st.peer_identity == peer_identity
        if resume or retry:
            return self._judge_resume(session_id, st, peer_identity)
        if st is not None or session_id in self._tombs:
            return Decision(Verdict.REFUSE, code=ErrorCode.REFUSED, reason="duplicate session id")
        return Decision(Verdict.NEW)

    def _judge_resume(self, session_id: bytes, st: S | None, peer_identity: str) -> Decision[S]:
        if st is not None:
            if st.peer_identity and peer_identity != st.peer_identity:
                # only the relay that opened a session may resume it
                return Decision(
                    Verdict.REFUSE,
                    st,
                    code=ErrorCode.REFUSED,
                    reason="session belongs to another peer",
                )
            return Decision(Verdict.ATTACH, st)
        tomb = self._tombs.get(session_id)
        if tomb is not None:
            return Decision(Verdict.ENDED, tomb=tomb)
        return Decision(
            Verdict.REFUSE, code=ErrorCode.UNKNOWN_SESSION, reason="no such session here"
        )

    def finished(self, session_id: bytes, tomb: Tomb) -> None:
        """The session ended: forget it, remember how (the oldest tombstones go)."""
        self.sessions.pop(session_id, None)
        self._tombs[session_id] = tomb
        while len(self._tombs) > self._max_tombs:
            self._tombs.popitem(last=False)
