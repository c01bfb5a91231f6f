"""The session service's Prometheus metrics (``vspc.metrics``), every label value
from a closed set: connection ends are ``EndKind`` values, refusal codes the names
of ``SecureError`` (the sealed transport) or ``ErrorCode`` (the session layer),
exec outcomes ``OUTCOMES``. ``SessionMetrics(None)`` counts nothing (tests, tools).
"""

from __future__ import annotations

from common.io.sealedsession import ConnectionEnd, EndKind
from common.proto.session.errors import SecureError
from common.proto.session.messages import ErrorCode, ExitStatus
from vspc.core.linelog import Stream as LogStream
from vspc.metrics import VspcMetrics

OUTCOMES = ("exited", "signalled", "refused", "timeout", "cancelled")
IN, OUT = "tether_to_appliance", "appliance_to_tether"


def code_name(end: ConnectionEnd) -> str:
    """The refusal's code as a bounded label: the enum member's name, or ``other``."""
    enum = SecureError if end.kind is EndKind.REFUSED else ErrorCode
    if end.code is None:
        return "other"
    try:
        return enum(end.code).name.lower()
    except ValueError:
        return "other"


def outcome(status: ExitStatus) -> str:
    return "signalled" if status.signal is not None else "exited"


class SessionMetrics:
    def __init__(self, metrics: VspcMetrics | None) -> None:
        self.m = metrics

    def established(self) -> None:
        if self.m is not None:
            self.m.session_connections_total.labels("established").inc()

    def ended(self, end: ConnectionEnd) -> None:
        if self.m is None:
            return
        self.m.session_connections_total.labels(end.kind.value).inc()
        if end.kind in (EndKind.REFUSED, EndKind.PROTOCOL) and end.code is not None:
            self.m.session_refusals_total.labels(code_name(end)).inc()

    def exec_started(self) -> None:
        if self.m is not None:
            self.m.session_execs_started_total.inc()

    def exec_finished(self, how: str) -> None:
        if self.m is not None:
            self.m.session_execs_finished_total.labels(how).inc()

    def carried(self, direction: str, n: int) -> None:
        if self.m is not None and n:
            self.m.session_bytes_total.labels(direction).inc(n)

    def logged(self, stream: LogStream, data: bytes) -> None:
        if self.m is not None and (lines := data.count(b"\n")):
            self.m.container_log_lines_total.labels(stream.value).inc(lines)

    def lost_lines(self, n: int) -> None:
        if self.m is not None and n > 0:
            self.m.container_log_lost_lines_total.inc(n)
