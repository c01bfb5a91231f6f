"""The TLS tables of the daemons' configs, by role, and the contexts they make.

* ``ServerTls``: a server certificate, and with ``client-ca`` the CA whose
  certificates clients must show (the vSPC's ``telnets://`` for ESX, the
  appliance's endpoint for relays).
* ``ClientTls``: what a client trusts (``ca``), with ``cert``/``key`` for mutual
  TLS and ``server-name`` to check (the relay's TCP egress to the appliance).

Peer links use ``common.link.config.PeerTls`` (always mutual, TLS 1.3, peers
named by identity). Every context comes from ``common.io.tlsctx``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from common.io import tlsctx
from common.ops.config import require

__all__ = ["ClientTls", "ServerTls"]


@dataclass(frozen=True)
class ServerTls:
    """A server certificate (and optional CA that signs client certificates)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def check_files(self, prefix: str) -> None:
        """Called by the owning table's ``validate`` (an optional table's own
        errors would lose their key in common.ops.config's union handling)."""
        require(self.cert.is_file(), f"{prefix}.cert", f"no such file: {self.cert}")
        require(self.key.is_file(), f"{prefix}.key", f"no such file: {self.key}")
        require(
            self.client_ca is None or self.client_ca.is_file(),
            f"{prefix}.client-ca",
            f"no such file: {self.client_ca}",
        )

    def context(self) -> ssl.SSLContext:
        """A new server context (raises OSError/ssl.SSLError if a file will not load)."""
        return tlsctx.server_context(self.cert, self.key, client_ca=self.client_ca, keylog=True)


_client_contexts: dict[ClientTls, ssl.SSLContext] = {}


@dataclass(frozen=True)
class ClientTls:
    """TLS for a client: ``ca`` verifies the server; cert/key for mutual TLS."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def validate(self) -> None:
        require((self.cert is None) == (self.key is None), "key", "cert and key go together")

    def context(self) -> ssl.SSLContext:
        """One context per table (contexts are costly to build and hold)."""
        ctx = _client_contexts.get(self)
        if ctx is None:
            ctx = tlsctx.client_context(ca=self.ca, cert=self.cert, key=self.key, keylog=True)
            _client_contexts[self] = ctx
        return ctx
