"""Certificates for peer-link tests, made by our own CA code (common.io.certs)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.io import certs
from common.link.tls import TlsFiles


class Pki:
    def __init__(self, root: Path, key_type: certs.KeyType = "ed25519") -> None:
        self.root = root
        self.key_type = key_type
        certs.init_ca(root, key_type=key_type)

    def issue(self, kind: str, name: str, **kw: object) -> TlsFiles:
        res = certs.issue(self.root, kind, name, key_type=self.key_type, force=True, **kw)  # type: ignore[arg-type]
        return TlsFiles(res.cert_path, res.key_path, self.root / certs.CA_CERT)

    def expired(self, kind: str, name: str) -> TlsFiles:
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
        return self.issue(kind, name, not_before=start, days=1)
