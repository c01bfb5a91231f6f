"""TLS 1.3 mutual authentication for peer links, identities checked by URI SAN.

OpenSSL verifies the chain to our cluster CA and the validity period (untrusted
and expired certificates fail the handshake); ``check_peer`` then checks the
``vic://`` identity in the peer's certificate against the configured peers.
Hostnames play no part: peers are named by identity, not by address.
"""

from __future__ import annotations

import ssl
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from cryptography import x509

from common.io import revocation, tlsctx
from common.io.certs import CertError, cert_identities
from common.io.tlsctx import TLS13
from common.io.tlsrefresh import Stamp, stamp
from common.io.tlsstream import TlsStream


class PeerIdentityError(Exception):
    """The peer's certificate does not name an identity we accept; ``reason`` is
    ``no_certificate``, ``bad_identity`` (not exactly one vic:// SAN) or
    ``identity_not_allowed``."""

    def __init__(self, message: str, reason: str = "identity_not_allowed") -> None:
        super().__init__(message)
        self.reason = reason


# OpenSSL X509_V_ERR_* codes -> refusal reason (anything else: bad_certificate)
_VERIFY_REASONS = {
    2: "unknown_ca",  # unable to get issuer certificate
    3: "crl_missing",  # unable to get certificate CRL
    8: "crl_invalid",  # CRL signature failure
    12: "crl_expired",
    9: "not_yet_valid",
    10: "expired",
    18: "unknown_ca",  # self-signed leaf
    19: "unknown_ca",  # self-signed certificate in chain
    20: "unknown_ca",  # unable to get local issuer certificate
    21: "unknown_ca",  # unable to verify the first certificate
    23: "revoked",  # listed in the CA's CRL (common.io.revocation)
}
# Handshake errors that end a peer link before it starts (TLS and identity).
HANDSHAKE_ERRORS = (trio.BrokenResourceError, PeerIdentityError, trio.TooSlowError, OSError)


def refusal_reason(e: BaseException) -> str:
    """A short, fixed word for why a peer link's TLS set-up failed (a metric label):
    what we found wrong with the peer's certificate, ``refused_by_peer`` when the
    peer's alert says it refused ours, ``handshake_timeout`` or ``handshake_failed``."""
    if isinstance(e, trio.TooSlowError):
        return "handshake_timeout"
    if isinstance(e, PeerIdentityError):
        return e.reason
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__  # TlsStream: BrokenResourceError from the SSLError
    if isinstance(cause, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(cause.verify_code, "bad_certificate")
    if isinstance(cause, ssl.SSLError):
        why = (cause.reason or "").upper()
        if "DID_NOT_RETURN_A_CERTIFICATE" in why or "CERTIFICATE_REQUIRED" in why:
            return "no_certificate"
        if "ALERT" in why:
            return "refused_by_peer"
        return "bad_certificate" if "CERTIFICATE" in why else "handshake_failed"
    return "handshake_failed"


def remote_address(stream: trio.abc.Stream) -> str:
    """``host:port`` (or the socket path) of the far end of ``stream``, or ``-``."""
    inner = getattr(stream, "transport", stream)
    sock = getattr(inner, "socket", None)
    try:
        name = sock.getpeername() if sock is not None else None
    except OSError:
        return "-"
    if isinstance(name, tuple) and len(name) >= 2:
        return f"[{name[0]}]:{name[1]}" if ":" in str(name[0]) else f"{name[0]}:{name[1]}"
    return str(name) if name else "-"


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    def paths(self) -> tuple[Path, ...]:
        """Every file the contexts read: certificate, key, CA and the CA's CRL."""
        return (self.cert, self.key, self.ca, tlsctx.crl_path(self.ca))


def files_stamp(files: TlsFiles | None) -> Stamp:
    """What changes when any of ``files`` is rewritten (renamed over, edited,
    created or removed): a reload rebuilds the contexts when this differs."""
    return () if files is None else stamp(files.paths())


def is_revoked(link: Any, files: TlsFiles) -> bool:
    """Whether the peer certificate of ``link`` (its ``transport``) is in the CRL of
    ``files.ca`` (False when it cannot tell: no TLS, no CRL, a CRL that does not load)."""
    serial = peer_serial(getattr(link, "transport", None))
    if serial is None:
        return False
    try:
        return serial in revocation.revoked_serials(files.ca)
    except CertError:
        return False


def peer_serial(ssl_object: Any) -> int | None:
    """The serial number of the peer's certificate on ``ssl_object`` (None: none)."""
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except (ValueError, AttributeError):
        return None
    return x509.load_der_x509_certificate(der).serial_number if der else None


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """Server side of a peer link: TLS 1.3, a client certificate from our CA required;
    no tickets (one stream per link, no reconnect storms worth resuming)."""
    return tlsctx.server_context(
        files.cert, files.key, client_ca=files.ca, min_version=TLS13, max_version=TLS13, tickets=0
    )


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """Client side of a peer link: TLS 1.3, the server verified against our CA by
    identity (the URI SAN, checked by check_peer), not by host name."""
    return tlsctx.client_context(
        ca=files.ca,
        cert=files.cert,
        key=files.key,
        check_hostname=False,
        min_version=TLS13,
        max_version=TLS13,
    )


def peer_identity(ssl_object: Any) -> str:
    """The single ``vic://`` URI SAN of the peer certificate on ``ssl_object``.

    Works with ``ssl.SSLObject``, ``ssl.SSLSocket`` and ``trio.SSLStream``.
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PeerIdentityError("peer presented no certificate", "no_certificate")
    ids = cert_identities(x509.load_der_x509_certificate(der))
    if len(ids) != 1:
        raise PeerIdentityError(
            f"peer certificate must carry exactly one vic:// URI SAN, found {ids or 'none'}",
            "bad_identity",
        )
    return ids[0]


def check_peer(ssl_object: Any, expected: Collection[str]) -> str:
    """Return the peer's identity if it is one of ``expected``, else raise."""
    ident = peer_identity(ssl_object)
    if ident not in expected:
        raise PeerIdentityError(f"peer identity {ident} is not a configured peer")
    return ident


async def handshake(
    stream: trio.abc.Stream,
    ctx: ssl.SSLContext,
    *,
    server_side: bool,
    expected: Collection[str],
) -> tuple[TlsStream, str]:
    """Wrap ``stream`` in TLS, complete the handshake and check the peer identity.

    On any failure the underlying stream is closed and the error re-raised
    (``trio.BrokenResourceError`` for TLS failures, ``PeerIdentityError``).
    """
    tls = TlsStream(stream, ctx, server_side=server_side)
    try:
        await tls.do_handshake()
        ident = check_peer(tls, expected)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return tls, ident
