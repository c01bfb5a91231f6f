"""The console's TCP endpoint at the door: mutual TLS, then operators only.

Policy: a client must show a certificate signed by ``[console.tcp] client-ca`` (OpenSSL,
with the CA's CRL when there is one: a revoked operator is refused in the
handshake); if that certificate names ``vic://`` identities, every one of them
must be an operator's (``vic://operator/<name>``, from ``vic certs issue operator``),
so a relay's or appliance's certificate from the same cluster CA does not open
consoles. A certificate without ``vic://`` identities (an operator CA of the
site's own) is accepted as before.

Each refusal is one WARNING line with the client's address and a reason, and
``vspc_tls_refused_total{listener="console",reason}`` (``vspc.tlsrefusals``).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import trio
from cryptography import x509
from prometheus_client import Counter

from common.io.certs import cert_identities
from common.link.tls import refusal_reason
from common.ops.wiretext import wire
from vspc.tlsrefusals import tls_refused as tls_refused

log = logging.getLogger("vspc.console")

OPERATOR_PREFIX = "vic://operator/"


def operator_refusal(tls: Any) -> str | None:
    """Why the client certificate on ``tls`` is not an operator's (None: it is)."""
    der = tls.getpeercert(binary_form=True)
    if not der:
        return "no client certificate"
    ids = cert_identities(x509.load_der_x509_certificate(der))
    others = [i for i in ids if not i.startswith(OPERATOR_PREFIX)]
    return f"{others[0]} is not an operator identity" if others else None


async def accept_operator(
    raw: trio.abc.Stream, ctx: ssl.SSLContext, peer: str, refused: Counter
) -> trio.SSLStream[Any] | None:
    """The client's TLS stream once it is an operator's, else None (logged, counted)."""
    tls = trio.SSLStream(raw, ctx, server_side=True)
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as e:
        reason = refusal_reason(e)
        why = e.__cause__ or e
        log.warning("console client %s: TLS refused (%s): %s", peer, reason, wire(str(why)))
        refused.labels("console", reason).inc()
        return None
    why_not = operator_refusal(tls)
    if why_not is not None:
        log.warning("console client %s: refused (not_operator): %s", peer, wire(why_not))
        refused.labels("console", "not_operator").inc()
        return None
    return tls
