"""What the peer-link layer reports to the daemon's metrics.

Routers, link servers and the mesh call these as things happen; the relay daemon
passes its ``RelayMetrics`` (which counts them), anything else gets ``NO_EVENTS``.
Reasons are short fixed words (``common.link.tls.refusal_reason``), fit as label values.
"""

from __future__ import annotations


class LinkEvents:
    """The events; this base counts nothing."""

    def link_cut(self) -> None:
        """A working peer link died without a GOAWAY (its streams resume elsewhere)."""

    def tls_refused(self, reason: str) -> None:
        """A peer link's TLS handshake or identity check failed."""

    def header_refused(self, reason: str) -> None:
        """A stream from a peer was refused for its origin header."""


NO_EVENTS = LinkEvents()
