"""``vspc_tls_refused_total{listener,reason}``: TLS clients the appliance refused.

The vSPC's counterpart of ``relay_tls_refused_total``: the console's TCP endpoint
counts here (``listener="console"``, see ``vspc.console.tlsgate``), the Docker TCP
endpoint (``listener="docker"``, ``vspc.docker.server``), the relays' endpoint
(``listener="endpoint"``, ``count_handshake_refusal``), the ESX listener
(``listener="esx"``, ``vspc.esx_conn``), and so does the
link endpoint's peer-link server (``listener="link"``) through ``LinkRefusals``.
Reasons are the fixed words of ``common.link.tls.refusal_reason`` plus
``not_operator``. One counter per registry (daemons in tests share none).
"""

from __future__ import annotations

import weakref
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter

from common.io.streamlayers import find_layer
from common.link.events import LinkEvents
from common.link.tls import refusal_reason

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


def handshake_refusal(stream: Any, e: BaseException) -> str | None:
    """The refusal reason when ``e`` ended ``stream``'s TLS handshake (None: not a
    TLS stream, or its handshake was done and ``e`` came later)."""
    tls = find_layer(stream, trio.SSLStream)  # under buffering / prefix layers
    if tls is None:
        return None
    try:
        tls.getpeercert()  # an error until the handshake is done
    except (ValueError, trio.NeedHandshakeError):
        return refusal_reason(e)
    return None


def count_handshake_refusal(
    registry: CollectorRegistry, listener: str, stream: Any, e: BaseException
) -> None:
    """Count ``e`` on ``listener`` if it ended ``stream``'s TLS handshake."""
    reason = handshake_refusal(stream, e)
    if reason is not None:
        tls_refused(registry).labels(listener, reason).inc()


class LinkRefusals(LinkEvents):
    """Peer-link events of the link endpoint: TLS refusals counted by reason."""

    def __init__(self, registry: CollectorRegistry, listener: str = "link") -> None:
        self._counter = tls_refused(registry)
        self._listener = listener

    def tls_refused(self, reason: str) -> None:
        self._counter.labels(self._listener, reason).inc()
