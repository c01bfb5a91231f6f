"""What the peer-link layer reports to the daemon's metrics.

Routers, link servers and the mesh call these as things happen; the relay daemon
passes its ``RelayMetrics`` (which counts them), anything else gets ``NO_EVENTS``.
Reasons are short fixed words (``common.link.tls.refusal_reason``), fit as label values.
"""

from __future__ import annotations

# Buckets of the daemons' link RTT histograms (seconds): a LAN's 0.2 ms to a WAN's 1 s;
# past 2.5 s the link is all but dead (keepalive ``dead_after``).
RTT_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LinkEvents:
    """The events; this base counts nothing."""

    def link_cut(self) -> None:
        """A working peer link died without a GOAWAY (its streams resume elsewhere)."""

    def tls_refused(self, reason: str) -> None:
        """A peer link's TLS handshake or identity check failed."""

    def header_refused(self, reason: str) -> None:
        """A stream from a peer was refused for its origin header."""

    def link_up(self, where: str, peer: str) -> None:
        """Link server ``where`` took a link from ``peer`` (its identity; "" plaintext)."""

    def link_rtt(self, where: str, seconds: float, *, outgoing: bool) -> None:
        """A keepalive PING's round trip on a link of ``where`` (a router's route name,
        a link server's name: both from the config); ``outgoing``: a router's link."""


NO_EVENTS = LinkEvents()
