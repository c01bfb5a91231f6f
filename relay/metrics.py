"""Prometheus metrics of the relay, one ``RelayMetrics`` per daemon on its own registry.

Bytes per listener and direction are live: a custom collector adds, at scrape time,
the bytes of closed streams to the current ``PumpCounters`` of every live stream,
so a long-lived console shows its traffic while it runs, at no per-byte cost.

What happened to streams and links:

* ``relay_streams_ended_total{outcome}`` and ``relay_bytes_delivered_total{outcome,
  direction}``: each stream once settled, ``completed`` (EOF both ways), ``reset``
  (an end reset its connection or aborted the stream) or ``failed`` (the relay
  could not carry it: egress, timeouts, a peer session that failed); delivered
  bytes are those the far end took: acknowledged by the peer relay over a peer
  link, written to the socket otherwise. ``relay_streams_failed_total{listener,reason}``
  says why a stream failed.
* ``relay_link_cuts_total``, ``relay_resumes_total`` (live: resumes of streams
  still running count at once), ``relay_tls_refused_total{reason}``,
  ``relay_headers_refused_total{reason}``: the peer mesh (``LinkEvents``).
* ``relay_egress_reachable{listener}``: 1 if the last egress connect of a stream from
  that listener worked, 0 if it failed (no series before the first stream); the relay's
  /readyz says not ready while a running listener's last egress connect failed.
* ``relay_replay_buffer_bytes``: bytes the live streams hold for replay (sent, not yet
  acknowledged by the far end): what a link cut would resend.

The ``listener`` label is the name of the listener a stream came in on (``[[vspc]]``,
``[[serial]]``... ``name`` in the config, or ``peer`` for streams from peer relays): a
bounded set from the config, never a VM name or text from the wire. The keepalive
round trips of the routes' links: the histogram ``relay_peer_link_rtt_seconds{route}``
(``link_rtt``); their reconnects are in ``relay.metrics_links``; the process, platform
and ``vic_channel_build_info`` collectors in ``common.ops.metrics_http``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.link.events import LinkEvents
from common.ops.metrics_http import standard_collectors
from relay.metrics_links import rtt_histogram

TO_APPLIANCE = "to_appliance"  # ingress (VM side) -> egress
TO_VM = "to_vm"


class LiveCounters(Protocol):
    """What relay.pump.PumpCounters offers (a = ingress side, b = egress side)."""

    a_to_b: int
    b_to_a: int
    spliced: bool


class Resumable(Protocol):
    """What common.link.resumable.ResumableStream offers: paths attached (1 = never resumed)."""

    attachments: int

    @property
    def replay_buffered(self) -> int: ...


COMPLETED, RESET, FAILED = "completed", "reset", "failed"
OUTCOMES = (COMPLETED, RESET, FAILED)


class _Live:
    __slots__ = ("counters", "listener", "resumables")

    def __init__(
        self, listener: str, counters: LiveCounters, resumables: tuple[Resumable, ...]
    ) -> None:
        self.listener = listener
        self.counters = counters
        self.resumables = resumables


def _resumes(streams: tuple[Resumable, ...]) -> int:
    return sum(max(0, s.attachments - 1) for s in streams)


class RelayMetrics(LinkEvents):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        standard_collectors(r)
        self.opened = Counter(
            "relay_streams_opened",
            "streams admitted and connected to their egress",
            ["listener"],
            registry=r,
        )
        self.failed = Counter(
            "relay_streams_failed",
            "streams that ended in an error",
            ["listener", "reason"],
            registry=r,
        )
        self.refused = Counter(
            "relay_streams_refused",
            "connections refused before relaying",
            ["listener", "reason"],
            registry=r,
        )
        self.closed_by_mode = Counter(
            "relay_streams_closed", "finished streams by pump mode", ["mode"], registry=r
        )
        self.reloads = Counter("relay_reloads", "configuration reloads", ["result"], registry=r)
        self.ended = Counter(
            "relay_streams_ended", "settled streams by outcome", ["outcome"], registry=r
        )
        self.delivered = Counter(
            "relay_bytes_delivered",
            "bytes the far end took (acknowledged over a peer link), by the stream's outcome",
            ["outcome", "direction"],
            registry=r,
        )
        for outcome in OUTCOMES:
            self.ended.labels(outcome)
            for d in (TO_APPLIANCE, TO_VM):
                self.delivered.labels(outcome, d)
        self.cuts = Counter(
            "relay_link_cuts", "peer links that died while working, without GOAWAY", registry=r
        )
        self.link_rtt_seconds = rtt_histogram(r)
        self.tls_refusals = Counter(
            "relay_tls_refused", "peer links refused in TLS set-up", ["reason"], registry=r
        )
        self.header_refusals = Counter(
            "relay_headers_refused",
            "streams from peers refused for their origin header",
            ["reason"],
            registry=r,
        )
        self._closed_resumes = 0
        self.egress_ok: dict[str, bool] = {}  # listener -> did its last egress connect work
        self._closed_bytes: dict[tuple[str, str], int] = {}
        self._live: dict[int, _Live] = {}
        self._listeners: set[str] = set()
        r.register(_LiveCollector(self))

    def add_route(self, listener: str) -> None:
        """Make a listener's series exist (at 0) from the start."""
        self._listeners.add(listener)
        self.opened.labels(listener)

    def egress_result(self, listener: str, ok: bool) -> None:
        """The outcome of a stream's egress connect (``relay_egress_reachable``, /readyz)."""
        self.egress_ok[listener] = ok

    def stream_started(
        self,
        key: int,
        listener: str,
        counters: LiveCounters,
        resumables: tuple[Resumable, ...] = (),
    ) -> None:
        self._live[key] = _Live(listener, counters, resumables)
        self.opened.labels(listener).inc()

    def stream_settled(self, outcome: str, to_appliance: int, to_vm: int) -> None:
        """A stream's final outcome and the bytes its far ends took."""
        self.ended.labels(outcome).inc()
        self.delivered.labels(outcome, TO_APPLIANCE).inc(to_appliance)
        self.delivered.labels(outcome, TO_VM).inc(to_vm)

    # --- LinkEvents --------------------------------------------------------------

    def link_cut(self) -> None:
        self.cuts.inc()

    def tls_refused(self, reason: str) -> None:
        self.tls_refusals.labels(reason).inc()

    def header_refused(self, reason: str) -> None:
        self.header_refusals.labels(reason).inc()

    def link_rtt(self, where: str, seconds: float, *, outgoing: bool) -> None:
        if outgoing:  # ``where``: a [peer.routes] name (bounded)
            self.link_rtt_seconds.labels(where).observe(seconds)

    def add_bytes(self, listener: str, direction: str, n: int) -> None:
        k = (listener, direction)
        self._closed_bytes[k] = self._closed_bytes.get(k, 0) + n

    def stream_ended(self, key: int) -> None:
        live = self._live.pop(key, None)
        if live is None:
            return
        c = live.counters
        self._closed_resumes += _resumes(live.resumables)
        self.add_bytes(live.listener, TO_APPLIANCE, c.a_to_b)
        self.add_bytes(live.listener, TO_VM, c.b_to_a)
        self.closed_by_mode.labels("splice" if c.spliced else "copy").inc()

    # --- read side (tests and the collector) ---------------------------------

    def bytes_total(self, listener: str, direction: str) -> int:
        n = self._closed_bytes.get((listener, direction), 0)
        for live in self._live.values():
            if live.listener == listener:
                c = live.counters
                n += c.a_to_b if direction == TO_APPLIANCE else c.b_to_a
        return n

    def replay_bytes(self) -> int:
        return sum(s.replay_buffered for x in self._live.values() for s in x.resumables)

    def resumes_total(self) -> int:
        return self._closed_resumes + sum(_resumes(x.resumables) for x in self._live.values())

    def active(self, listener: str | None = None) -> int:
        if listener is None:
            return len(self._live)
        return sum(1 for live in self._live.values() if live.listener == listener)

    def snapshot(self) -> tuple[dict[tuple[str, str], int], dict[str, int], dict[str, int]]:
        by_dir = dict(self._closed_bytes)
        active: dict[str, int] = dict.fromkeys(self._listeners, 0)
        modes = {"splice": 0, "copy": 0}
        for live in self._live.values():
            c = live.counters
            for d, n in ((TO_APPLIANCE, c.a_to_b), (TO_VM, c.b_to_a)):
                by_dir[(live.listener, d)] = by_dir.get((live.listener, d), 0) + n
            active[live.listener] = active.get(live.listener, 0) + 1
            modes["splice" if c.spliced else "copy"] += 1
        return by_dir, active, modes


class _LiveCollector(Collector):
    def __init__(self, m: RelayMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        by_dir, active, modes = self.m.snapshot()
        b = CounterMetricFamily(
            "relay_bytes", "bytes relayed, live streams included", labels=["listener", "direction"]
        )
        for listener in sorted(self.m._listeners | {r for r, _ in by_dir}):
            for d in (TO_APPLIANCE, TO_VM):
                b.add_metric([listener, d], by_dir.get((listener, d), 0))
        yield b
        a = GaugeMetricFamily(
            "relay_streams_active", "streams being relayed now", labels=["listener"]
        )
        for listener, n in sorted(active.items()):
            a.add_metric([listener], n)
        yield a
        p = GaugeMetricFamily(
            "relay_streams_active_by_mode", "live streams by pump mode", labels=["mode"]
        )
        for mode, n in modes.items():
            p.add_metric([mode], n)
        yield p
        yield CounterMetricFamily(
            "relay_resumes",
            "streams resumed on a new path after a link cut or route change",
            value=self.m.resumes_total(),
        )
        e = GaugeMetricFamily(
            "relay_egress_reachable",
            "1 if the listener's last egress connect worked, 0 if it failed",
            labels=["listener"],
        )
        for name, ok in sorted(self.m.egress_ok.items()):
            e.add_metric([name], 1 if ok else 0)
        yield e
        yield GaugeMetricFamily(
            "relay_replay_buffer_bytes",
            "bytes live streams hold for replay (sent, not yet acknowledged)",
            value=self.m.replay_bytes(),
        )
