"""``vspc_tls_refused_total{listener,reason}``: TLS clients the appliance refused.

The vSPC's counterpart of ``relay_tls_refused_total``: the console's TCP endpoint
counts here (``listener="console"``, see ``vspc.console.tlsgate``), the Docker TCP
endpoint (``listener="docker"``, ``vspc.docker.server``), and so does the
link endpoint's peer-link server (``listener="link"``) through ``LinkRefusals``.
Reasons are the fixed words of ``common.link.tls.refusal_reason`` plus
``not_operator``. One counter per registry (daemons in tests share none).
"""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter

from common.link.events import LinkEvents

_counters: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def tls_refused(registry: CollectorRegistry) -> Counter:
    """``vspc_tls_refused_total{listener,reason}`` on ``registry``."""
    c = _counters.get(registry)
    if c is None:
        c = _counters[registry] = Counter(
            "vspc_tls_refused",
            "TLS clients refused (handshake, certificate or identity), by listener and reason",
            ["listener", "reason"],
            registry=registry,
        )
    return c


class LinkRefusals(LinkEvents):
    """Peer-link events of the link endpoint: TLS refusals counted by reason."""

    def __init__(self, registry: CollectorRegistry, listener: str = "link") -> None:
        self._counter = tls_refused(registry)
        self._listener = listener

    def tls_refused(self, reason: str) -> None:
        self._counter.labels(self._listener, reason).inc()
