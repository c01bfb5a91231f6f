"""Metrics of the relay's outgoing peer links, read from the mesh's routers at scrape time.

* ``relay_peer_link_reconnects_total{route}``: links opened on the route after its first
  (a cut, a route change, a peer's restart). It restarts from 0 if the route is removed
  from the config and added again, which Prometheus reads as a counter reset.

``route`` is a ``[peer.routes]`` name from the config: bounded, never wire text.
The keepalive round trips are a histogram observed as each PONG arrives
(``relay_peer_link_rtt_seconds{route}``, ``relay.metrics.RelayMetrics.link_rtt``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from common.link.events import RTT_BUCKETS


def rtt_histogram(registry: CollectorRegistry) -> Histogram:
    """``relay_peer_link_rtt_seconds{route}``, observed by ``RelayMetrics.link_rtt``."""
    return Histogram(
        "relay_peer_link_rtt_seconds",
        "round trips of the keepalive pings on the route's peer links",
        ["route"],
        buckets=RTT_BUCKETS,
        registry=registry,
    )


class _Router(Protocol):
    links_opened: int


class PeerLinkCollector(Collector):
    """Reads ``routers`` (route name -> ``common.link.route.Router``) when scraped."""

    def __init__(self, routers: Mapping[str, _Router]) -> None:
        self.routers = routers

    def collect(self) -> Iterator[Metric]:
        again = CounterMetricFamily(
            "relay_peer_link_reconnects",
            "peer links opened on the route after its first",
            labels=["route"],
        )
        for name, router in sorted(self.routers.items()):
            again.add_metric([name], max(0, router.links_opened - 1))
        yield again
