"""TLS contexts: one server builder and one client builder for every program.

What differs between the programs' contexts is an argument here, nothing else:
the version range (peer links speak TLS 1.3 only, the rest 1.2 and up),
whether the server asks for client certificates (it does when given the CA that
signs them), the CA a client trusts (the system store when none is given),
whether a client checks the host name (peer links name peers by identity, not
address), session tickets, and whether ``SSLKEYLOGFILE`` is honoured (as
``ssl.create_default_context`` does; the contexts that came from it keep doing
so). Both start from ``ssl.SSLContext`` with Python's defaults (compression and
SSLv2/3 off; ``OP_NO_COMPRESSION`` kept explicit).

Revocation: wherever a context verifies peers against a CA file (``ca.crt``), the
CA's CRL next to it (``ca.crl``, see ``common.io.revocation``) is loaded too when
present, with OpenSSL's leaf CRL check on, so a revoked certificate fails the
handshake (X509_V_ERR_CERT_REVOKED) in every program that trusts that CA.

Contexts follow their files: ``common.io.tlsrefresh.refresh()`` re-reads the
certificate, key, CA and CRL of every context built here whose files changed, and
each connection a context makes afterwards takes the trust rebuilt from them
(``FollowingContext``): a CA removed from its file is no longer trusted by new
handshakes, on servers and clients alike.

Files that cannot be loaded raise ``OSError``/``ssl.SSLError``, for the caller
to name its config key.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys

from common.io import tlsrefresh
from common.io.tlsrefresh import crl_path as crl_path

PathLike = str | os.PathLike[str]
TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
NEWEST = ssl.TLSVersion.MAXIMUM_SUPPORTED


def server_context(
    cert: PathLike,
    key: PathLike,
    *,
    client_ca: PathLike | None = None,
    min_version: ssl.TLSVersion = TLS12,
    max_version: ssl.TLSVersion = NEWEST,
    tickets: int | None = None,
    keylog: bool = False,
) -> ssl.SSLContext:
    """A server presenting ``cert``; with ``client_ca``, clients must show a certificate
    it signed. ``tickets``: how many session tickets to send (None: OpenSSL's default)."""
    ctx = _new(ssl.PROTOCOL_TLS_SERVER, min_version, max_version, keylog)
    ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    tlsrefresh.track_chain(ctx, cert, key)
    if client_ca is not None:
        require_client_certs(ctx, client_ca)
    if tickets is not None:
        ctx.num_tickets = tickets
    return ctx


def require_client_certs(ctx: ssl.SSLContext, client_ca: PathLike) -> None:
    """Make server ``ctx`` require client certificates signed by ``client_ca`` (apart
    from ``server_context`` for a caller that names each file's config key)."""
    trust_ca(ctx, client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED


def trust_ca(ctx: ssl.SSLContext, ca: PathLike) -> None:
    """Verify peers against ``ca``, and its CRL (leaf check) when there is one; the
    files are tracked for ``tlsrefresh.refresh``."""
    tlsrefresh.load_ca(ctx, ca)
    tlsrefresh.track_ca(ctx, ca)


def client_context(
    *,
    ca: PathLike | None = None,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    check_hostname: bool = True,
    min_version: ssl.TLSVersion = TLS12,
    max_version: ssl.TLSVersion = NEWEST,
    keylog: bool = False,
) -> ssl.SSLContext:
    """A client verifying the server against ``ca`` (the system store when None), by
    host name unless ``check_hostname`` is off; ``cert``/``key`` for mutual TLS."""
    ctx = _new(ssl.PROTOCOL_TLS_CLIENT, min_version, max_version, keylog)
    ctx.check_hostname = check_hostname
    if ca is not None:
        trust_ca(ctx, ca)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key) if key is not None else None)
        tlsrefresh.track_chain(ctx, cert, key)
    return ctx


class FollowingContext(ssl.SSLContext):
    """An ``SSLContext`` whose new connections are made by its successor once its CA or
    CRL files changed (``tlsrefresh.successor``), whoever wraps them (trio, tlsstream)."""

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        ctx = tlsrefresh.successor(self)
        if ctx is None:
            return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        return ctx.wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        ctx = tlsrefresh.successor(self)
        args = (server_side, do_handshake_on_connect, suppress_ragged_eofs, server_hostname)
        if ctx is None:
            return super().wrap_socket(sock, *args, session)
        return ctx.wrap_socket(sock, *args, session)


def _new(
    protocol: ssl._SSLMethod, min_version: ssl.TLSVersion, max_version: ssl.TLSVersion, keylog: bool
) -> ssl.SSLContext:
    ctx = FollowingContext(protocol)  # CERT_REQUIRED and check_hostname for a client
    ctx.minimum_version = min_version
    ctx.maximum_version = max_version
    ctx.options |= ssl.OP_NO_COMPRESSION
    keylog_file = os.environ.get("SSLKEYLOGFILE") if keylog else None
    if keylog_file and not sys.flags.ignore_environment:
        ctx.keylog_filename = keylog_file
    return ctx
