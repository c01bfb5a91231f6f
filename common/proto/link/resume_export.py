"""A resumable session's state as data, to carry it on in another process (sans-IO).

A relay handing its live streams to its successor (relay.handoff) passes, for a
VM stream whose egress is a resumable stream on a peer link, that session's
state: ``image`` takes it from a ``ResumeSession`` (send side: the offsets and
every byte not yet acknowledged, the replay; receive side: the offsets, and
the bytes received but not yet handed on, passed by the caller), ``restore``
builds the same session in the new process. There it resumes on a path of its
own exactly as after a lost link: the far end reports what it received and
sends again from what we handed on, so no byte is lost or repeated.

Only a session that can be carried on whole is imaged: nothing discarded from
its replay (``overflow="discard"``), no EOF either way (a half-closed stream
stays where it is). ``NotImageable`` says why not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from common.proto.link.resume import Chunk, Overflow, ResumeSession


class NotImageable(Exception):
    """The session cannot be carried on elsewhere; ``str(e)`` says why (a short word)."""


@dataclass(frozen=True, slots=True)
class SessionImage:
    """One session's offsets and held bytes (what ``restore`` needs)."""

    acked: int  # send side: the far end acknowledged everything below
    max_sent: int  # the highest offset ever sent (the far end may report up to it)
    replay: bytes  # every byte from ``acked`` on (sent or not): written - acked
    recv_offset: int  # receive side: bytes received
    handed: int  # of those, handed on (written downstream)
    floor: int  # where the far end's session started (a continued session)
    pending: bytes  # received, not yet handed on: recv_offset - handed

    @property
    def written(self) -> int:
        return self.acked + len(self.replay)

    def check(self) -> None:
        """Raise ValueError when the numbers do not add up (bad input)."""
        ok = (
            0 <= self.acked <= self.max_sent <= self.written
            and 0 <= self.floor <= self.recv_offset
            and 0 <= self.handed <= self.recv_offset
            and self.handed + len(self.pending) == self.recv_offset
        )
        if not ok:
            raise ValueError("inconsistent session image")


def image(s: ResumeSession, handing: int, held: Iterable[Chunk]) -> SessionImage:
    """The state of ``s``; ``handing``: bytes the application took and handed on
    (not yet reported to ``s``), ``held``: the received bytes it has not taken."""
    if s.eof_written or s.eof_received:
        raise NotImageable("half_closed")
    if s._base != s._acked or s._gap is not None:  # (discarded bytes)
        raise NotImageable("replay_gap")
    replay = b"".join(bytes(c) for c in (*s._sent, *s._unsent))
    pending = b"".join(bytes(c) for c in held)
    img = SessionImage(
        s.acked, s._max_sent, replay, s.recv_offset, s.handed + handing, s._floor, pending
    )
    try:
        img.check()
    except ValueError:
        raise NotImageable("inconsistent") from None
    return img


def restore(img: SessionImage, replay_limit: int, overflow: Overflow = "block") -> ResumeSession:
    """A detached session that carries ``img`` on (it resumes like one whose path
    was lost). The replay is kept whole even beyond ``replay_limit`` (the sender
    waits until acknowledgements bring it under). The far end may report any
    offset up to what was written (not only ``max_sent``): the image is taken while
    the old process still holds the path, and it may send more before it lets go."""
    img.check()
    s = ResumeSession(
        replay_limit, overflow=overflow, send_start=img.acked, recv_start=img.recv_offset
    )
    if img.replay:
        s._unsent.append(img.replay)
        s._end += len(img.replay)
    # every byte written counts as sent: the old process may still transmit what
    # it held until it lets the stream go, so the far end may report any of it
    s._max_sent = img.written
    s.handed = img.handed
    s._ack_sent = img.handed
    s._floor = img.floor
    return s
