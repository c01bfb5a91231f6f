"""Prometheus metrics of the appliance side (vSPC, endpoint, consoles).

One ``VspcMetrics`` per daemon, on its own registry, so tests can run several. The
peer links relays open to the appliance: ``LinkMetrics`` (their events) and
``LinkCollector`` (their state at scrape time), set up by ``vspc.endpoint``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.link.events import RTT_BUCKETS
from common.ops.metrics_http import standard_collectors
from vspc.tlsrefusals import LinkRefusals

BEGIN_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
)


@dataclass(frozen=True)
class VspcMetrics:
    registry: CollectorRegistry
    connected_vms: Gauge
    esx_connections: Gauge
    bytes_total: Counter  # labels: direction = vm_to_appliance | appliance_to_vm
    vmotions_total: Counter  # labels: outcome = complete | abort | expired | notnow | peer_refused
    begin_to_goahead_seconds: Histogram
    console_clients: Gauge
    slow_clients_dropped_total: Counter
    relayed_streams_total: Counter  # labels: kind, result = accepted | rejected
    protocol_errors_total: Counter  # labels: where
    console_log_gap_bytes_total: Counter  # console bytes lost to the log (recorded as gaps)
    console_log_gaps_total: Counter  # gap events recorded (restart gaps included)
    console_log_write_errors_total: Counter  # failed console log writes (held or dropped)
    # labels: reason = source | takeover | flood | identify_timeout | idle | output
    telnet_refused_total: Counter
    relayed_continued_total: Counter  # labels: known = yes | no (a relay on the path restarted)
    relayed_gap_bytes_total: Counter  # labels: direction; bytes no end had any more
    # sessions with tethered VMs (vspc.sessions.metrics)
    sessions_connected: Gauge  # VM sessions a connection carries now
    session_connections_total: Counter  # labels: event = established | an EndKind value
    session_refusals_total: Counter  # labels: code = a SecureError / ErrorCode name
    session_execs_started_total: Counter
    session_execs_finished_total: Counter  # labels: outcome (vspc.sessions.metrics.OUTCOMES)
    session_bytes_total: Counter  # labels: direction = tether_to_appliance | appliance_to_tether
    container_log_lines_total: Counter  # labels: stream = stdout | stderr
    container_log_lost_lines_total: Counter  # lines not written (queue full, disk full)

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> VspcMetrics:
        r = registry if registry is not None else CollectorRegistry()
        standard_collectors(r)
        counter, gauge = partial(Counter, registry=r), partial(Gauge, registry=r)
        return cls(
            registry=r,
            connected_vms=gauge("vspc_connected_vms", "VM serial ports with a live connection"),
            esx_connections=gauge("vspc_esx_connections", "open ESX Telnet connections"),
            bytes_total=counter("vspc_bytes", "console bytes carried", ["direction"]),
            vmotions_total=counter("vspc_vmotions", "vMotions by outcome", ["outcome"]),
            begin_to_goahead_seconds=Histogram(
                "vspc_vmotion_begin_to_goahead_seconds",
                "time from VMOTION-BEGIN received to GOAHEAD sent",
                buckets=BEGIN_LATENCY_BUCKETS,
                registry=r,
            ),
            console_clients=gauge("vspc_console_clients", "attached console clients"),
            slow_clients_dropped_total=counter(
                "vspc_slow_clients_dropped", "console clients dropped for falling behind"
            ),
            relayed_streams_total=counter(
                "vspc_relayed_streams", "streams arriving through relays", ["kind", "result"]
            ),
            protocol_errors_total=counter(
                "vspc_protocol_errors", "connections closed for bad input", ["where"]
            ),
            console_log_gap_bytes_total=counter(
                "vspc_console_log_gap_bytes", "console bytes missing from the logs (gaps)"
            ),
            console_log_gaps_total=counter(
                "vspc_console_log_gaps", "gaps recorded in console event logs"
            ),
            console_log_write_errors_total=counter(
                "vspc_console_log_write_errors", "failed console log writes"
            ),
            telnet_refused_total=counter(
                "vspc_telnet_refused",
                "ESX Telnet connections refused or closed by the vSPC's own checks",
                ["reason"],
            ),
            relayed_continued_total=counter(
                "vspc_relayed_continued",
                "relayed connections that continue an earlier one",
                ["known"],
            ),
            relayed_gap_bytes_total=counter(
                "vspc_relayed_gap_bytes",
                "relayed stream bytes lost with a restarted relay",
                ["direction"],
            ),
            **_session_metrics(r),
        )


def _session_metrics(r: CollectorRegistry) -> dict[str, Any]:
    counter = partial(Counter, registry=r)
    return {
        "sessions_connected": Gauge(
            "vspc_sessions_connected", "VM sessions a connection carries now", registry=r
        ),
        "session_connections_total": counter(
            "vspc_session_connections",
            "session connections established, and ended by how",
            ["event"],
        ),
        "session_refusals_total": counter(
            "vspc_session_refusals", "session connections refused, by code", ["code"]
        ),
        "session_execs_started_total": counter("vspc_session_execs_started", "execs started"),
        "session_execs_finished_total": counter(
            "vspc_session_execs_finished", "execs finished, by outcome", ["outcome"]
        ),
        "session_bytes_total": counter(
            "vspc_session_bytes", "channel bytes carried (stdin out, output in)", ["direction"]
        ),
        "container_log_lines_total": counter(
            "vspc_container_log_lines", "container log lines taken", ["stream"]
        ),
        "container_log_lost_lines_total": counter(
            "vspc_container_log_lost_lines", "container log lines lost (not written)"
        ),
    }


class LinkMetrics(LinkRefusals):
    """The appliance side of the peer links, the counterpart of the relay's
    ``relay_peer_link_*``: ``vspc_peer_link_rtt_seconds`` (histogram of keepalive
    round trips), ``vspc_peer_links_accepted_total``, ``vspc_peer_link_reconnects_total``
    (links from a peer that had one before: a cut, a relay restart), and
    ``vspc_peer_link_cuts_total``; the TLS refusals of ``LinkRefusals``. No label but
    the events' own: peers are many, their identities are not label values."""

    KNOWN_PEERS = 4096  # identities remembered for "reconnect" (oldest forgotten)

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.rtt = Histogram(
            "vspc_peer_link_rtt_seconds",
            "round trips of the keepalive pings on the relays' peer links",
            buckets=RTT_BUCKETS,
            registry=registry,
        )
        counter = partial(Counter, registry=registry)
        self.accepted = counter("vspc_peer_links_accepted", "peer links taken from relays")
        self.reconnects = counter(
            "vspc_peer_link_reconnects", "peer links from a relay that had one before"
        )
        self.cuts = counter(
            "vspc_peer_link_cuts", "peer links that died while working, without GOAWAY"
        )
        self._peers: dict[str, None] = {}  # an ordered set, bounded

    def link_up(self, where: str, peer: str) -> None:
        self.accepted.inc()
        key = peer or "plaintext"
        if key in self._peers:
            self.reconnects.inc()
            del self._peers[key]
        elif len(self._peers) >= self.KNOWN_PEERS:
            del self._peers[next(iter(self._peers))]
        self._peers[key] = None

    def link_rtt(self, where: str, seconds: float, *, outgoing: bool) -> None:
        self.rtt.observe(seconds)

    def link_cut(self) -> None:
        self.cuts.inc()


class _Links(Protocol):
    @property
    def live_links(self) -> int: ...

    @property
    def resumes(self) -> int: ...

    @property
    def replay_buffered(self) -> int: ...


class LinkCollector(Collector):
    """Read from the link endpoint at scrape time: ``vspc_peer_links`` (live),
    ``vspc_resumes_total`` (streams that went on over a new link after a cut, as
    ``relay_resumes_total``), ``vspc_replay_buffer_bytes`` (sent, not yet acknowledged)."""

    def __init__(self, links: _Links) -> None:
        self.links = links

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("vspc_peer_links", "live peer links", value=self.links.live_links)
        yield CounterMetricFamily(
            "vspc_resumes",
            "relayed streams resumed on a new peer link after a cut",
            value=self.links.resumes,
        )
        yield GaugeMetricFamily(
            "vspc_replay_buffer_bytes",
            "relayed stream bytes sent and not yet acknowledged by the relay",
            value=self.links.replay_buffered,
        )
