"""The acceptor's resumable sessions, shared by all its links (trio adapter).

``common.proto.link.sessions.SessionDirectory`` decides what each OPEN means;
``SessionTable`` carries the verdict out: a new ``ResumableStream`` handed to
``accept()``, a re-attached one, or a RESET with the verdict's code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from common.link.peerlink import LinkConfig, PeerLink
from common.link.replay import ReplayPool
from common.link.resumable import ResumableStream
from common.ops.wiretext import wire
from common.proto.link.frames import ErrorCode
from common.proto.link.mux import StreamOpened
from common.proto.link.sessions import SessionDirectory, Tomb, Verdict

log = logging.getLogger("relay.resumable")


@dataclass(frozen=True)
class Accepted:
    stream: ResumableStream
    header: bytes
    peer_identity: str


class SessionTable:
    """The acceptor's sessions, shared by all its links; start with ``open_session_table``."""

    def __init__(
        self,
        nursery: trio.Nursery,
        config: LinkConfig | None = None,
        *,
        accept_backlog: int = 1024,
        tombstones: int = 4096,
    ) -> None:
        self.config = config or LinkConfig()
        self._nursery = nursery
        self._dir: SessionDirectory[ResumableStream] = SessionDirectory(tombstones)
        self._sessions = self._dir.sessions
        self.pool = ReplayPool(self.config.replay_pool, self.config.replay_reserve)
        self._send, self._recv = trio.open_memory_channel[Accepted](accept_backlog)

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: bytes) -> ResumableStream | None:
        return self._sessions.get(session_id)

    async def accept(self) -> Accepted:
        return await self._recv.receive()

    def __aiter__(self) -> SessionTable:
        return self

    async def __anext__(self) -> Accepted:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def on_open(self, link: PeerLink, ev: StreamOpened) -> None:
        """``PeerLink`` on_open callback (reader task, synchronous)."""
        sid = ev.stream_id
        d = self._dir.judge(ev.session_id, ev.resume, link.peer_identity)
        if d.verdict is Verdict.ATTACH:
            assert d.session is not None
            d.session._attach_accepted(link, sid, ev.recv_offset)
        elif d.verdict is Verdict.ENDED:
            assert d.tomb is not None
            if d.tomb.code == ErrorCode.NO_ERROR:
                link.send_ack(sid, d.tomb.recv_offset, d.tomb.eof_received)
                link.detach(sid, ErrorCode.NO_ERROR, "session already complete")
            else:
                link.detach(sid, d.tomb.code, d.tomb.reason)
        elif d.verdict is Verdict.REFUSE:
            if d.session is not None:
                log.warning(
                    "resume of stream %s by %s refused (opened by %s)",
                    d.session.short_id,
                    wire(link.peer_identity or "plaintext"),
                    wire(d.session.peer_identity),
                )
            link.detach(sid, d.code, d.reason)
        else:
            self._accept(link, ev)

    def _accept(self, link: PeerLink, ev: StreamOpened) -> None:
        cont = (ev.continues, ev.recv_offset) if ev.continues is not None else None
        st = ResumableStream(
            ev.session_id, ev.header, self.config, opener=False, pool=self.pool, continues=cont
        )
        st.peer_identity = link.peer_identity
        try:
            self._send.send_nowait(Accepted(st, ev.header, link.peer_identity))
        except trio.WouldBlock:
            link.detach(ev.stream_id, ErrorCode.REFUSED, "accept backlog full")
            return
        self._sessions[ev.session_id] = st
        st.on_finished = self._finished
        st._attach_accepted(link, ev.stream_id, ev.recv_offset)
        self._nursery.start_soon(st.run)

    def leave_all(self, reason: str) -> None:
        """Going away (a drain's end): every session is left to its opener to carry
        on (RESET INTERNAL, retryable), here after a restart or elsewhere."""
        for st in list(self._sessions.values()):
            st.abort(reason, code=ErrorCode.INTERNAL)

    def _finished(self, st: ResumableStream) -> None:
        fail = st.failure
        code, reason = (fail.code, fail.reason) if fail is not None else (ErrorCode.NO_ERROR, "")
        tomb = Tomb(st.session.recv_offset, st.session.eof_received, code, reason)
        self._dir.finished(st.session_id, tomb)
