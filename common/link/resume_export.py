"""Passing a live resumable stream (the opener's side) to another process.

``export_stream`` takes the state of an opener's ``ResumableStream`` whose
application side is stopped (nothing read from it and not yet written on, no
write under way): its session id, origin header and session image
(common.proto.link.resume_export). Once the other process has it,
``let_go`` ends the stream here without a word to the far end: no RESET, no
EOF, no frame at all, so the far end's session waits for a resume as after a
lost link. ``restore_stream`` is the other process's side: a stream on its own
``Router`` that resumes there with a resume OPEN (same session, same identity)
and carries on: bytes received and not yet handed on are handed on first,
bytes not yet acknowledged are sent again from the far end's resume point.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.link.resumable import ResumableStream
from common.link.route import Router
from common.link.stream_path import StreamFailedError
from common.proto.link.frames import ErrorCode
from common.proto.link.resume_export import NotImageable, SessionImage, image, restore
from common.proto.link.resume_state import PathInput, PathState

__all__ = ["NotImageable", "StreamImage", "export_stream", "let_go", "restore_stream"]

# states an exported stream can resume from: the far end has the session
_EXPORTABLE = (PathState.ATTACHED, PathState.DETACHED, PathState.RESUMING)


@dataclass(frozen=True, slots=True)
class StreamImage:
    session_id: bytes
    header: bytes  # the origin header the OPEN carries
    session: SessionImage


def export_stream(st: ResumableStream) -> StreamImage:
    """The state of ``st`` now (raises NotImageable: it stays here)."""
    m = st.machine
    if not st.opener or m.state not in _EXPORTABLE or m.send_closed:
        raise NotImageable("path_state")
    held = (chunk for chunk, _att in st._recv)
    return StreamImage(st.session_id, st.header, image(st.session, st._handing, held))


def let_go(st: ResumableStream, reason: str = "moved to another process") -> None:
    """End ``st`` here, telling the far end nothing: it resumes from elsewhere."""
    att, st._att = st._att, None
    if att is not None:
        att.current = False  # what still arrives on it is dropped (and credited)
    st.session.detach()
    if st.machine.fail(ErrorCode.CANCEL, local=False):  # (local=False: nothing to report)
        st._failure = StreamFailedError(ErrorCode.CANCEL, reason)
    st._recv.clear()
    st._notify()


def restore_stream(img: StreamImage, router: Router) -> ResumableStream:
    """A stream carrying ``img`` on over ``router``; the caller starts ``run()``."""
    st = ResumableStream(
        img.session_id,
        img.header,
        router.config,
        opener=True,
        connector=router,
        pool=router.pool,
    )
    st.session = restore(img.session, router.config.replay_limit, router.config.overflow)  # type: ignore[arg-type]
    if img.session.pending:
        st._recv.append((img.session.pending, None))
    for step in (PathInput.SEND_OPEN, PathInput.ANSWERED, PathInput.PATH_LOST):
        st.machine.handle(step)  # -> DETACHED: its next OPEN resumes
    router.streams.add(st)
    st.on_finished = router.streams.discard
    return st
