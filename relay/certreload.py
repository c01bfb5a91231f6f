"""The relay's certificates at run time: which files it watches, which it reports.

``cert_keys``: (path, config key) of every certificate the relay presents or
trusts (peer link certificate and CA, egress client certificates and CAs), for
``relay_cert_not_after_timestamp_seconds{cert}`` and the expiry warnings.
``watched_paths``: those files, their keys and the CA's CRL, for the file watcher
that reloads the relay when one of them changes (``common.io.certwatch``).
"""

from __future__ import annotations

from pathlib import Path

from common.io import tlsctx
from relay.config import RelayConfig


def cert_keys(cfg: RelayConfig) -> list[tuple[Path, str]]:
    out = list(cfg.own_certificates())
    if cfg.peer is not None and cfg.peer.tls is not None:
        out.append((cfg.peer.tls.ca, "peer.tls.ca"))
    for name, eg in cfg.egress.items():
        if eg.tls is not None:
            out.append((eg.tls.ca, f"egress.{name}.tls.ca"))
    return out


def watched_paths(cfg: RelayConfig) -> list[Path]:
    out: list[Path] = []
    if cfg.peer is not None and cfg.peer.tls is not None:
        t = cfg.peer.tls
        out += [t.cert, t.key, t.ca, tlsctx.crl_path(t.ca)]
    for eg in cfg.egress.values():
        if eg.tls is not None:
            out += [p for p in (eg.tls.cert, eg.tls.key, eg.tls.ca) if p is not None]
            out.append(tlsctx.crl_path(eg.tls.ca))
    return out
