"""Live TLS clients of the appliance cut when their certificate is revoked.

OpenSSL checks the CRL only in the handshake, so a reload (SIGHUP or a CRL file
change, ``common.io.tlsrefresh``) would leave a revoked operator's live console
attach or Docker connection running. A ``RevokedCut`` (listener ``console``
(``vspc.console.service``) or ``docker`` (``vspc.docker.server``)) remembers each live TLS
client of one listener with its cancel scope; after every refresh it cancels
those whose peer serial the CA's CRL now lists: one WARNING line each and
``vspc_tls_refused_total{listener,reason="revoked"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from prometheus_client import CollectorRegistry

from common.io import revocation, tlsrefresh
from common.io.certs import CertError
from vspc.tlsrefusals import tls_refused

log = logging.getLogger("vspc.tls")


@dataclass
class _Live:
    peer: str
    tls: Any  # its serial is read at cut time: the handshake may still be on
    scope: trio.CancelScope


def _serial(tls: Any) -> int | None:
    try:
        der = tls.getpeercert(binary_form=True)
    except (ValueError, AttributeError, trio.NeedHandshakeError):  # no handshake yet
        return None
    return x509.load_der_x509_certificate(der).serial_number if der else None


class RevokedCut:
    """The live TLS clients of ``listener`` (client certificates from ``ca``)."""

    def __init__(self, registry: CollectorRegistry | None, listener: str, ca: Path | None) -> None:
        self._counter = tls_refused(registry) if registry is not None else None
        self.listener = listener
        self.ca = ca
        self._live: dict[int, _Live] = {}
        tlsrefresh.subscribe(self)

    @contextmanager
    def track(self, tls: Any, peer: str, scope: trio.CancelScope) -> Iterator[None]:
        """While inside: ``scope`` is cancelled if ``tls``'s peer gets revoked."""
        key = id(scope)
        self._live[key] = _Live(peer, tls, scope)
        try:
            yield
        finally:
            self._live.pop(key, None)

    def refreshed(self) -> None:
        self.cut_revoked()

    def cut_revoked(self) -> int:
        """Cancel the live clients whose certificate the CRL lists; how many."""
        if self.ca is None or not self._live:
            return 0
        try:
            revoked = revocation.revoked_serials(self.ca)
        except CertError as e:
            log.error("%s: cannot read the CRL: %s", self.listener, e)
            return 0
        cut = 0
        for key, live in list(self._live.items()):
            serial = _serial(live.tls)
            if serial is not None and serial in revoked:
                log.warning(
                    "%s client %s: closed: its certificate (serial %x) is revoked",
                    self.listener,
                    live.peer,
                    serial,
                )
                if self._counter is not None:
                    self._counter.labels(self.listener, "revoked").inc()
                live.scope.cancel()
                del self._live[key]
                cut += 1
        return cut
