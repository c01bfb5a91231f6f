"""Metrics of the relay's outgoing peer links, read from the mesh's routers at scrape time.

* ``relay_peer_link_rtt_seconds{route}``: the round trip of the link's last keepalive
  PING (``common.link.peerlink``), per route with a live link;
* ``relay_peer_link_reconnects_total{route}``: links opened on the route after its first
  (a cut, a route change, a peer's restart). It restarts from 0 if the route is removed
  from the config and added again, which Prometheus reads as a counter reset.

``route`` is a ``[peer.routes]`` name from the config: bounded, never wire text.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _Link(Protocol):
    @property
    def alive(self) -> bool: ...

    @property
    def rtt(self) -> float | None: ...


class _Router(Protocol):
    links_opened: int

    @property
    def link(self) -> _Link | None: ...


class PeerLinkCollector(Collector):
    """Reads ``routers`` (route name -> ``common.link.route.Router``) when scraped."""

    def __init__(self, routers: Mapping[str, _Router]) -> None:
        self.routers = routers

    def collect(self) -> Iterator[Metric]:
        rtt = GaugeMetricFamily(
            "relay_peer_link_rtt_seconds",
            "round trip of the last keepalive ping on the route's live peer link",
            labels=["route"],
        )
        again = CounterMetricFamily(
            "relay_peer_link_reconnects",
            "peer links opened on the route after its first",
            labels=["route"],
        )
        for name, router in sorted(self.routers.items()):
            again.add_metric([name], max(0, router.links_opened - 1))
            link = router.link
            if link is not None and link.alive and link.rtt is not None:
                rtt.add_metric([name], link.rtt)
        yield rtt
        yield again
