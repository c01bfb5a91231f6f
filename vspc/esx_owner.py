"""What an ESX connection reports to, and how it reports how it ended."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import trio

from vspc.metrics import VspcMetrics
from vspc.tlsrefusals import count_handshake_refusal

#: An ``vspc.esx_conn.EsxConnection`` (which imports this module: not named here).
Conn = Any

log = logging.getLogger("vspc.esx")


class ConnectionOwner(Protocol):
    """What a connection reports to: vspc.service.VspcService (the switchboard's
    adapter), which decides what each session event means."""

    metrics: VspcMetrics

    async def on_session_event(self, conn: Conn, ev: object) -> None: ...

    async def probe_answered(self, conn: Conn) -> None: ...

    def may_read(self, conn: Conn) -> bool:
        """Whether the reader may read more (else wait for resume_reading)."""
        ...

    async def connection_closed(self, conn: Conn) -> None: ...


class _Ended(Protocol):
    close_reason: str | None
    stream: trio.abc.Stream

    @property
    def writer_failed(self) -> bool: ...


def report(conn: _Ended, e: BaseException, service: ConnectionOwner) -> None:
    """Log (and count) what ended ``conn``: ``e``, from its reader or writer."""
    lost = isinstance(e, trio.BrokenResourceError | trio.ClosedResourceError)
    if lost and conn.close_reason is not None and not conn.writer_failed:
        log.debug("%r: reader woken to close: %s", conn, e)  # (_cancel)
    elif lost:
        log.info("%r: connection lost: %s", conn, e)
        count_handshake_refusal(service.metrics.registry, "esx", conn.stream, e)
    elif isinstance(e, OSError):
        log.info("%r: connection error: %s", conn, e)
    else:
        log.error("%r: internal error, closing the connection", conn, exc_info=e)
        service.metrics.protocol_errors_total.labels(where="internal").inc()
