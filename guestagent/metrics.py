"""The agent's own Prometheus metrics, served when the agent config has ``[metrics]
enabled = true`` (off by default: in a guest nobody scrapes it; on loopback when on).

Read from the agent's counters at scrape time (no per-byte cost):

* ``agent_console_bytes_total{direction}``: console bytes sent to the appliance
  (``to_appliance``, the container's output) and received from it (``from_appliance``);
* ``agent_console_reconnects_total``: console channels connected after the first;
* ``agent_console_replayed_bytes_total``: output sent again after a channel dropped;
* ``agent_console_buffered_bytes``: output queued for the appliance, not yet sent;
* ``agent_guestinfo_write_failures_total``: guestinfo publications that failed;
* ``agent_session_connections_total{event}``: sealed-session connections of the tether
  (``established``, and ended by how: a ``common.io.sealedsession_conn.EndKind`` value);
* ``agent_session_refusals_total{code}``: connections the sealed session refused, by code;

plus the process, platform and ``vic_channel_build_info`` collectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.io.sealedsession import EndpointStats
from common.ops.metrics_http import standard_collectors


class Console(Protocol):
    """What guestagent.console.ConsoleLink offers."""

    connects: int
    sent_total: int
    received_total: int
    replayed_total: int

    @property
    def buffered(self) -> int: ...


class Publications(Protocol):
    """What guestagent.publisher.Publisher offers."""

    failures: int


class AgentCollector(Collector):
    def __init__(
        self, console: Console | None, publisher: Publications, session: EndpointStats | None
    ) -> None:
        self.console = console
        self.publisher = publisher
        self.session = session

    def collect(self) -> Iterator[Metric]:
        yield from self._console()
        yield CounterMetricFamily(
            "agent_guestinfo_write_failures",
            "guestinfo publications that failed",
            value=self.publisher.failures,
        )
        yield from self._session()

    def _console(self) -> Iterator[Metric]:
        c = self.console
        b = CounterMetricFamily("agent_console_bytes", "console bytes", labels=["direction"])
        b.add_metric(["to_appliance"], c.sent_total if c else 0)
        b.add_metric(["from_appliance"], c.received_total if c else 0)
        yield b
        yield CounterMetricFamily(
            "agent_console_reconnects",
            "console channels connected after the first",
            value=max(0, c.connects - 1) if c else 0,
        )
        yield CounterMetricFamily(
            "agent_console_replayed_bytes",
            "console output sent again after a channel dropped",
            value=c.replayed_total if c else 0,
        )
        yield GaugeMetricFamily(
            "agent_console_buffered_bytes",
            "console output queued for the appliance, not yet sent",
            value=c.buffered if c else 0,
        )

    def _session(self) -> Iterator[Metric]:
        s = self.session
        conns = CounterMetricFamily(
            "agent_session_connections",
            "sealed-session connections established, and ended by how",
            labels=["event"],
        )
        refused = CounterMetricFamily(
            "agent_session_refusals", "session connections refused, by code", labels=["code"]
        )
        if s is not None:
            conns.add_metric(["established"], s.established)
            for kind, n in sorted(s.ended.items()):
                conns.add_metric([kind], n)
            for code, n in sorted(s.refused.items()):
                refused.add_metric([code], n)
        yield conns
        yield refused


def agent_registry(
    console: Console | None, publisher: Publications, session: EndpointStats | None
) -> CollectorRegistry:
    """A registry with the agent's metrics and the standard collectors."""
    r = CollectorRegistry()
    standard_collectors(r)
    r.register(AgentCollector(console, publisher, session))
    return r
