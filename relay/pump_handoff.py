"""Live streams handed to the successor on a relay handoff (relay.handoff).

The old relay: every pumped stream is enlisted while it runs. Once the
successor is READY, ``StreamMover.move`` asks each movable pump to stop at a
safe point (relay.pump_freeze: nothing held in user space or in a splice pipe),
passes the stopped ones' sockets, VM side and appliance side, with their state
(relay.core.handoff_wire) in batches of SCM_RIGHTS messages, then lets their
pumps return with the sockets open; the carrier closes its copies. A VM stream
whose egress is a resumable stream on a peer route moves with its session's
state (relay.pump_peer, common.link.resume_export): the successor resumes it
on its own peer link. A VM stream whose egress is TLS passes its VM socket and
byte counts once its TLS connection ended (relay.pump_tls): the successor
continues it at the appliance. A stream that cannot move stays and drains as
before (``timeouts.drain``, then cut): a FIFO-pair pipe, pty or serial
ingress, a half-closed stream, a plain pump on the copy path, one that did not
reach a safe point by the deadline; a session from a peer relay is left and
resumes from the far side (relay.mesh), as before.
Each stream's path is one log line and ``relay_handoff_streams_total{path}``.

The successor: ``adopt_sockets`` turns a received batch's fds into streams.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from prometheus_client import CollectorRegistry, Counter

from common.link.resumable import ResumableStream
from common.link.resume_export import NotImageable, StreamImage, restore_stream
from common.proto.link.header import OriginHeader, continued
from relay import handoff_holds as holds
from relay.config import EgressConfig, RelayConfig
from relay.core.handoff_wire import (
    CONTINUED,
    Batch,
    Passed,
    Resumed,
    StreamState,
    batches,
    encode_batch,
    per_batch,
)
from relay.egress import EgressConnection
from relay.limits import Limits, Ticket
from relay.park import current_parker
from relay.pump_freeze import Freeze
from relay.pump_peer import PeerFreeze
from relay.pump_state import PumpCounters
from relay.pump_tls import TlsFreeze

log = logging.getLogger("relay.handoff")

MOVE_DEADLINE = 2.0  # seconds for every movable pump to reach a safe point
POLL = 0.002  # how often the mover looks for pumps at a safe point
SEND_TIMEOUT = 10.0  # one batch to the successor
BATCH_BYTES = 64 << 20  # session bytes (replay, pending) after one batch line

MOVED = "moved"
NO_SAFE_POINT = "no_safe_point"
SEND_FAILED = "send_failed"

SendBatch = Callable[[bytes, Sequence[int]], Awaitable[None]]


@dataclass(slots=True)
class Enlisted:
    """A pumped stream, while its pump runs."""

    freeze: Freeze | PeerFreeze | None  # None: it cannot move (``why``)
    why: str
    header: OriginHeader
    route: str
    peer: str
    egress: str
    vm_side: trio.abc.Stream
    app_side: trio.abc.Stream
    counters: PumpCounters

    def state(self) -> StreamState:
        """(Byte counts from the stream's start: a stream that continues an earlier
        connection counts from its header's offsets.)"""
        h, c = self.header, self.counters
        return StreamState(
            h.stream_id, self.route, h.kind, h.vm, h.label, self.peer, self.egress,
            h.offset + c.a_to_b, h.received + c.b_to_a,
        )  # fmt: skip

    def resumed(self) -> Passed:
        """A peer-egress stream's session state, taken now (raises NotImageable); a
        TLS-egress stream's counts, fixed now (it continues at the appliance)."""
        if isinstance(self.freeze, TlsFreeze):
            self.freeze.snapshot_counts()
            return CONTINUED
        if not isinstance(self.freeze, PeerFreeze):
            return None
        img = self.freeze.snapshot()
        return Resumed(img.session_id, img.header, img.session)

    def fds(self) -> tuple[int, ...]:
        assert isinstance(self.vm_side, trio.SocketStream)
        if isinstance(self.freeze, PeerFreeze):  # (TLS too: the VM side only)
            return (self.vm_side.socket.fileno(),)
        assert isinstance(self.app_side, trio.SocketStream)
        return self.vm_side.socket.fileno(), self.app_side.socket.fileno()


def why_not(vm_side: trio.abc.Stream, app_side: trio.abc.Stream, egress: str) -> str:
    """Why a stream cannot move ("" = it can)."""
    if isinstance(vm_side, ResumableStream):
        return "peer_session"  # it resumes from the far side (relay.mesh.hand_off)
    if egress == "peer":  # it moves with its session's state (relay.pump_peer)
        ok = type(vm_side) is trio.SocketStream and isinstance(app_side, ResumableStream)
        return "" if ok else "peer_egress"
    if type(vm_side) is not trio.SocketStream:
        return "ingress_stream"  # a FIFO pair, a pty, a serial device, TLS
    if type(app_side) is not trio.SocketStream:
        # a TLS egress continues at the appliance (relay.pump_tls)
        return "" if isinstance(app_side, trio.SSLStream) else "egress_stream"
    return ""


class StreamMover:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.live: dict[int, Enlisted] = {}
        self.paths = Counter(
            "relay_handoff_streams",
            "Live streams at a handoff, by what became of them (moved, or why they stayed)",
            ["path"],
            registry=registry,
        )

        self.session_bytes = 0  # peer-route streams' replay and pending bytes passed

    def enlist(self, e: Enlisted) -> int:
        self.live[id(e)] = e
        return id(e)

    def discharge(self, key: int) -> None:
        self.live.pop(key, None)

    async def move(self, send: SendBatch, max_fds: int, deadline: float) -> int:
        """Stop, pass and let go of every movable stream; the number moved. Each
        batch goes as soon as its pumps stopped (the first ones do not wait for
        the slowest); a pump with no safe point by ``deadline`` runs on here."""
        t0, total, size = trio.current_time(), len(self.live), per_batch(max_fds)
        pending: list[Enlisted] = []
        for e in list(self.live.values()):
            if e.freeze is None:
                self._count(e, e.why)
            else:
                e.freeze.ask()
                pending.append(e)
        asked, moved, broken = list(pending), 0, False
        try:
            with trio.move_on_at(deadline):
                while pending and not broken:
                    _poke(pending)
                    await trio.sleep(POLL)
                    ready = [e for e in pending if _frozen(e)]
                    pending = [e for e in pending if not _stopped(e)]
                    for batch in batches(ready, size):
                        n = await self._send(send, batch)
                        if n < 0:  # nothing more goes: the rest runs on here
                            broken = True
                            break
                        moved += n
        finally:  # (cancelled too: no pump stays held)
            for e in asked:
                self._call_off(e, SEND_FAILED if broken else NO_SAFE_POINT)
        log.info(
            "handoff: %d of %d live streams moved in %.0f ms (%d session bytes with them)",
            moved, total, (trio.current_time() - t0) * 1000, self.session_bytes,
        )  # fmt: skip
        return moved

    async def _send(self, send: SendBatch, batch: Sequence[Enlisted]) -> int:
        """Pass a batch: the number passed, -1 when the connection failed (whether
        the successor got it or not, nothing more is sent)."""
        # still held (a drain cut may have ended a pump since): checked with no
        # checkpoint before the send, so no fd is closed under it
        batch = [e for e in batch if _frozen(e)]
        taken: list[tuple[Enlisted, Passed]] = []
        for e in batch:  # (no checkpoint: the states are those of the fds passed)
            try:
                taken.append((e, e.resumed()))
            except NotImageable as exc:  # (a half-closed session, ...)
                self._decide(e, False, str(exc))
        await _close_tls(taken)
        done = 0
        for part in _by_bytes(taken):
            fds = [fd for e, _r in part for fd in e.fds()]
            line = encode_batch([e.state() for e, _r in part], [r for _e, r in part])
            try:
                with trio.CancelScope(shield=True), trio.fail_after(SEND_TIMEOUT):
                    await send(line, fds)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                log.warning("handoff: could not pass %d streams: %s", len(part), exc)
                return -1
            for e, _r in part:
                self._decide(e, True, MOVED)
            done += len(part)
            self.session_bytes += sum(len(r.blob) for _e, r in part if isinstance(r, Resumed))
        return done

    def _call_off(self, e: Enlisted, path: str) -> None:
        """Not moved: its pump runs on here (counted unless it had ended anyway)."""
        f = e.freeze
        if f is None or f.decided:
            return
        if f.frozen or not f.stopped:
            self._count(e, path)
        f.decide(False)

    def _decide(self, e: Enlisted, moved: bool, path: str) -> None:
        assert e.freeze is not None
        e.freeze.decide(moved)
        self._count(e, path)

    def _count(self, e: Enlisted, path: str) -> None:
        self.paths.labels(path).inc()
        if path == MOVED:
            log.info(
                "stream=%s route=%s vm=%s: moved to the successor (%d bytes to appliance, "
                "%d to vm so far)",
                e.header.stream_id, e.route, e.header.vm, e.counters.a_to_b, e.counters.b_to_a,
            )  # fmt: skip
        else:
            log.info(
                "stream=%s route=%s vm=%s: stays here (%s)%s",
                e.header.stream_id, e.route, e.header.vm, path,
                ", resumed from the far side" if path == "peer_session" else " and drains",
            )  # fmt: skip


async def _close_tls(taken: Sequence[tuple[Enlisted, Passed]]) -> None:
    """End the TLS egress connections of the streams about to pass, all at once
    (relay.pump_tls): the appliance has every byte they wrote before the successor
    continues them. (Shielded: a TLS stream got this far moves or is lost.)"""
    tls = [e.freeze for e, _r in taken if isinstance(e.freeze, TlsFreeze)]
    late: list[int] = []

    async def close(f: TlsFreeze) -> None:
        if not await f.close_egress():
            late.append(1)

    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as n:
            for f in tls:
                n.start_soon(close, f)
    if late:
        log.warning("handoff: %d TLS egress connections not closed by the appliance", len(late))


def _by_bytes(
    taken: Sequence[tuple[Enlisted, Passed]],
) -> list[list[tuple[Enlisted, Passed]]]:
    """Streams in lines of at most BATCH_BYTES session bytes (at least one each)."""
    parts: list[list[tuple[Enlisted, Passed]]] = []
    size = BATCH_BYTES
    for item in taken:
        n = len(item[1].blob) if isinstance(item[1], Resumed) else 0
        if not parts or size + n > BATCH_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(item)
        size += n
    return parts


def _frozen(e: Enlisted) -> bool:
    return e.freeze is not None and e.freeze.frozen and not e.freeze.decided


def _stopped(e: Enlisted) -> bool:
    return e.freeze is None or e.freeze.stopped


def _poke(pending: Sequence[Enlisted]) -> None:
    """Stop the pumps at a safe point now; wake the parked ones (all in one call)."""
    parked = set()
    for e in pending:
        f = e.freeze
        if f is not None:
            f.poke()
            if f.session is not None and f.session.parked_on is not None:
                parked.add(f.session)
    if parked:
        current_parker().wake(parked)


def adopt_socket(fd: int) -> trio.SocketStream:
    """The successor's stream on a fd it was passed."""
    return trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))


def adopt_sockets(vm_fd: int, app_fd: int) -> tuple[trio.SocketStream, trio.SocketStream]:
    """The successor's streams on the fds it was passed."""
    return adopt_socket(vm_fd), adopt_socket(app_fd)


class Taker(Protocol):
    """What ``adopt`` needs of the successor (relay.daemon.RelayDaemon)."""

    limits: Limits | None
    config: RelayConfig
    host: str
    _streams: trio.Nursery | None
    _egress_by_route: dict[str, EgressConfig]
    _carrier: Any  # relay.carry.Carrier (which imports this module)

    def _release(self, ticket: Ticket, done: trio.Event | None) -> None: ...


def adopt(d: Taker, batch: Batch) -> None:
    """The successor: carry on the streams of a batch the predecessor passed (each
    counted against the limits, never refused: it is live already)."""
    assert d.limits is not None and d._streams is not None
    resumed = batch.resumed or (None,) * len(batch.states)
    for state, fds, res in zip(batch.states, batch.fds, resumed, strict=True):
        app_side: trio.abc.Stream | None
        if res is None:
            vm_side, app_side = adopt_sockets(*fds[:2])
        elif not isinstance(res, Resumed):  # TLS: continued at the appliance
            vm_side, app_side = adopt_socket(fds[0]), None
        else:
            vm_side, app_side = adopt_socket(fds[0]), _resume(d, state, res)
            if app_side is None:
                vm_side.socket.close()
                continue
        ticket = d.limits.carry_over(state.vm)
        held = holds.hold(state.peer) if state.kind == "pipe" else None
        d._streams.start_soon(_carry_moved, d, state, vm_side, app_side, ticket, held)
    log.info("handoff: %d live streams taken over", len(batch.states))


def _resume(d: Taker, state: StreamState, res: Resumed) -> ResumableStream | None:
    """The successor's resumable stream for a passed session, on its own route."""
    egress = d._egress_by_route.get(state.route) or d.config.default_egress()
    router = d._carrier.mesh.routers.get(egress.route) if egress.kind == "peer" else None
    if router is None:
        log.warning(
            "stream=%s route=%s vm=%s: passed with a peer session but this config has no "
            "peer route for it: closed",
            state.sid, state.route, state.vm,
        )  # fmt: skip
        return None
    assert d._streams is not None
    st = restore_stream(StreamImage(res.session_id, res.header, res.image), router)
    d._streams.start_soon(st.run)
    return st


async def _carry_moved(
    d: Taker,
    state: StreamState,
    vm_side: trio.SocketStream,
    app_side: trio.abc.Stream | None,
    ticket: Ticket,
    held: Callable[[], None] | None = None,
) -> None:
    log.info(
        "stream=%s route=%s vm=%s: taken over (%d bytes to appliance, %d to vm before)",
        state.sid, state.route, state.vm, state.a_to_b, state.b_to_a,
    )  # fmt: skip
    egress = d._egress_by_route.get(state.route) or d.config.default_egress()
    header = OriginHeader(d.host, state.vm, state.kind, state.label, state.sid)
    if app_side is None:  # a new egress connection continues it (relay.pump_tls)
        header = continued(header, state.a_to_b, state.b_to_a)
    try:
        await d._carrier.carry(
            vm_side, header, egress, state.route, state.peer, d.config.timeouts,
            moved_in=EgressConnection(app_side) if app_side is not None else None,
        )  # fmt: skip
    finally:
        d._release(ticket, None)
        if held is not None:  # (a connect-mode pipe may connect again: relay.handoff_holds)
            held()
