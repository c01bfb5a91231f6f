"""Carrying one admitted stream: open its egress, pump it, count its outcome.

An admitted stream (from a local listener, or a session from a peer relay) gets a
connection to the appliance (or a resumable stream over a peer route), is pumped
until either side ends it, and is then counted once: completed, reset or failed
with a reason (``relay_streams_failed_total``), with the bytes each side took.
A stream with peer-link sessions is counted once those have delivered what they
hold.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

import trio

from common.io.pipepool import PipePool
from common.link.resumable import ResumableStream
from common.ops.lifecycle import Lifecycle
from common.proto.link.frames import ErrorCode
from common.proto.link.header import HeaderError, OriginHeader, encode_header
from relay.config import EgressConfig, TimeoutsConfig
from relay.core.hybrid import HybridError
from relay.egress import EgressConnection, open_egress
from relay.mesh import Mesh
from relay.metrics import COMPLETED, FAILED, RESET, TO_VM, RelayMetrics
from relay.pump import IdleTimeout, PumpCounters, PumpTimeout, pump
from relay.pump_freeze import Freeze
from relay.pump_handoff import Enlisted, StreamMover, why_not
from relay.pump_peer import PeerFreeze
from relay.pump_tls import movable, views

log = logging.getLogger("relay")

# Errors that mean "the egress (or its handshake) failed", not a bug.
_EGRESS_ERRORS = (
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    HybridError,
    HeaderError,
    ssl.SSLError,
)


# A peer session's failure code -> relay_streams_failed_total reason
_SESSION_REASONS: dict[int, str] = {
    ErrorCode.TIMEOUT: "resume_timeout",
    ErrorCode.GAP: "gap",
    ErrorCode.UNKNOWN_SESSION: "unknown_session",
    ErrorCode.PROTOCOL: "protocol",
    ErrorCode.FLOW_CONTROL: "protocol",
    ErrorCode.REFUSED: "refused",
    ErrorCode.INTERNAL: "internal",
}


def resumables(*streams: trio.abc.Stream) -> tuple[ResumableStream, ...]:
    return tuple(s for s in streams if isinstance(s, ResumableStream))


def reason(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclass
class Settling:
    """A stream that has stopped being pumped, until its outcome is counted."""

    stream: trio.abc.Stream  # the VM side (or the peer-link session that brought it)
    conn: EgressConnection | None
    counters: PumpCounters | None
    route: str
    failed: str  # why the relay could not carry it ("" = it did)

    @property
    def resumables(self) -> tuple[ResumableStream, ...]:
        return resumables(self.stream, *((self.conn.stream,) if self.conn else ()))

    def outcome(self) -> tuple[str, str]:
        """(completed | reset | failed, the failure reason)."""
        if self.failed:
            return FAILED, self.failed
        for r in self.resumables:
            f = r.failure
            if f is not None:
                if f.code == ErrorCode.CANCEL:  # the far end (or its VM) gave up
                    return RESET, ""
                return FAILED, _SESSION_REASONS.get(f.code, "peer_session")
        if self.counters is not None and self.counters.end_reason == "eof":
            return COMPLETED, ""
        return RESET, ""

    def delivered(self) -> tuple[int, int]:
        """Bytes the appliance side and the VM side took (to_appliance, to_vm)."""
        c, conn = self.counters, self.conn
        if c is None or conn is None:
            return 0, 0
        dst = conn.stream
        up = dst.delivered if isinstance(dst, ResumableStream) else c.a_to_b
        down = (
            self.stream.delivered
            if isinstance(self.stream, ResumableStream)
            else c.b_to_a + len(conn.pending)
        )
        return up, down


class Carrier:
    """Carries the daemon's admitted streams; ``streams`` is the daemon's streams
    nursery (where outcomes wait for their sessions to finish)."""

    def __init__(self, metrics: RelayMetrics, pipes: PipePool, mesh: Mesh, life: Lifecycle):
        self.metrics = metrics
        self.pipes = pipes
        self.mesh = mesh
        self.life = life
        self.streams: trio.Nursery | None = None
        self.mover = StreamMover(metrics.registry)

    async def carry(
        self,
        stream: trio.abc.Stream,
        header: OriginHeader,
        egress: EgressConfig,
        route: str,
        peer: str,
        t: TimeoutsConfig,
        moved_in: EgressConnection | None = None,
    ) -> None:
        """``moved_in``: the appliance side of a stream the predecessor passed."""
        sid, vm = header.stream_id, header.vm
        counters: PumpCounters | None = None
        conn: EgressConnection | None = moved_in
        failed = ""  # why the relay could not carry the stream ("" = it did)
        try:
            if conn is None:
                conn = await self._connect(header, egress, route, peer, t)
                self.metrics.egress_result(route, conn is not None)
            if conn is None:
                failed = "egress"
                return
            counters = PumpCounters()
            failed = await self._pump(stream, conn, header, egress, route, peer, t, counters)
        except trio.Cancelled:
            if self.life.stopping:
                failed = "drain_deadline"
                log.warning("stream=%s route=%s vm=%s cut at the drain deadline", sid, route, vm)
            raise
        finally:
            if counters is not None:
                self.metrics.stream_ended(id(counters))
            if counters is not None and counters.end_reason == "moved":
                await trio.aclose_forcefully(stream)  # (the successor has them now)
                if conn is not None:
                    await trio.aclose_forcefully(conn.stream)
            else:
                self._settle(Settling(stream, conn, counters, route, failed))
            if failed in ("egress", "error"):  # counted first, then the VM side sees it
                await trio.aclose_forcefully(stream)
                if conn is not None:
                    await trio.aclose_forcefully(conn.stream)

    async def _open(self, egress: EgressConfig, header: OriginHeader) -> EgressConnection:
        if egress.kind == "peer":
            st = await self.mesh.open_stream(egress.route, encode_header(header))
            return EgressConnection(st)
        return await open_egress(egress, header)

    async def _connect(
        self,
        header: OriginHeader,
        egress: EgressConfig,
        route: str,
        peer: str,
        t: TimeoutsConfig,
    ) -> EgressConnection | None:
        """The egress connection, or None (logged) when it could not be opened."""
        try:
            with trio.fail_after(t.connect):
                return await self._open(egress, header)
        except _EGRESS_ERRORS as e:
            why = (
                f"no connection or handshake within {t.connect}s"
                if isinstance(e, trio.TooSlowError)
                else reason(e)
            )
            log.warning(
                "stream=%s route=%s vm=%s peer=%s: egress %s failed: %s",
                header.stream_id,
                route,
                header.vm,
                peer,
                egress.kind,
                why,
            )
            return None

    async def _pump(
        self,
        stream: trio.abc.Stream,
        conn: EgressConnection,
        header: OriginHeader,
        egress: EgressConfig,
        route: str,
        peer: str,
        t: TimeoutsConfig,
        counters: PumpCounters,
    ) -> str:
        """Relay until either side ends; returns why it failed ("" = it did not)."""
        sid, vm = header.stream_id, header.vm
        self.metrics.stream_started(id(counters), route, counters, resumables(stream, conn.stream))
        log.info(
            "stream=%s route=%s kind=%s vm=%s label=%s peer=%s: relaying via %s",
            sid,
            route,
            header.kind,
            vm,
            header.label,
            peer,
            f"peer route {egress.route}" if egress.kind == "peer" else egress.kind,
        )
        try:
            if conn.pending:
                await stream.send_all(conn.pending)
                self.metrics.add_bytes(route, TO_VM, len(conn.pending))
            await self._run_pump(stream, conn.stream, header, egress, route, peer, t, counters)
        except PumpTimeout as e:
            log.info("stream=%s route=%s vm=%s closed: %s", sid, route, vm, e)
            return "idle" if isinstance(e, IdleTimeout) else "stall"
        except Exception as e:  # a bug or an unexpected error: this stream only
            log.error("stream=%s route=%s vm=%s failed: %s", sid, route, vm, reason(e))
            return "error"
        log.info(
            "stream=%s route=%s vm=%s closed (%s): %d bytes to appliance, %d to vm",
            sid,
            route,
            vm,
            counters.end_reason or "eof",
            counters.a_to_b,
            counters.b_to_a,
        )
        return ""

    async def _run_pump(
        self,
        stream: trio.abc.Stream,
        app_side: trio.abc.Stream,
        header: OriginHeader,
        egress: EgressConfig,
        route: str,
        peer: str,
        t: TimeoutsConfig,
        counters: PumpCounters,
    ) -> None:
        """The pump, enlisted meanwhile for a handoff (relay.pump_handoff)."""
        why = why_not(stream, app_side, egress.kind)
        freeze = None if why else movable(stream, app_side)
        key = self.mover.enlist(
            Enlisted(freeze, why, header, route, peer, egress.kind, stream, app_side, counters)
        )
        a, b, scope = views(freeze, stream, app_side)
        try:
            with scope:  # (a peer-egress pump that moved is cancelled at its waits)
                await pump(
                    a,
                    b,
                    counters=counters,
                    idle_timeout=t.idle or None,
                    stall_timeout=t.stall or None,
                    pipes=self.pipes,
                    freeze=freeze if isinstance(freeze, Freeze) else None,
                )
        finally:
            self.mover.discharge(key)
            if isinstance(freeze, PeerFreeze):
                freeze.ended = True
                if freeze.moved:
                    counters.end_reason = "moved"

    def _settle(self, st: Settling) -> None:
        """Count the stream's outcome and delivered bytes once its peer-link sessions
        (if any) have finished delivering what they hold."""
        if st.failed or not st.resumables or self.streams is None:
            self._account(st)
        else:
            self.streams.start_soon(self._account_when_finished, st)

    async def _account_when_finished(self, st: Settling) -> None:
        for r in st.resumables:
            await r.wait_finished()
        self._account(st)

    def _account(self, st: Settling) -> None:
        outcome, why = st.outcome()
        if outcome == FAILED:
            self.metrics.failed.labels(st.route, why).inc()
        self.metrics.stream_settled(outcome, *st.delivered())
