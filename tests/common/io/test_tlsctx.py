"""Every TLS context the programs build, pinned: the settings each call site gets.

The contexts come from one builder (common.io.tlsctx); these literals were taken
from the per-package builders it replaced, so a refactor that changes a
setting fails here. ``SSL_CERT_FILE`` points at a CA of its own so that a
context that also trusts the system store shows one CA more than its own, and
``SSLKEYLOGFILE`` is set to show which contexts honour it.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from common.io.tlsconfig import ClientTls, ServerTls
from common.link import tls
from tests.relay.pki_helpers import Pki
from vspc.console import client as console_client
from vspc.console import endpoint as console_endpoint
from vspc.console.config import ConsoleTcpConfig

V12, V13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
ANY = ssl.TLSVersion.MAXIMUM_SUPPORTED
SERVER, CLIENT = ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT
DEFAULT_OPTS = ssl.create_default_context().options  # what create_default_context sets
PLAIN_OPTS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).options
FLAGS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).verify_flags


def settings(ctx: ssl.SSLContext) -> dict[str, Any]:
    return {
        "protocol": ctx.protocol,
        "min": ctx.minimum_version,
        "max": ctx.maximum_version,
        "verify": ctx.verify_mode,
        "check_hostname": ctx.check_hostname,
        "options": ctx.options,
        "tickets": ctx.num_tickets,
        "cas": ctx.cert_store_stats()["x509_ca"],
        "keylog": ctx.keylog_filename is not None,
        "verify_flags": ctx.verify_flags,
        "post_handshake_auth": ctx.post_handshake_auth,
    }


def want(
    protocol: ssl._SSLMethod,
    min_v: ssl.TLSVersion,
    max_v: ssl.TLSVersion,
    verify: ssl.VerifyMode,
    check_hostname: bool,
    options: int,
    cas: int,
    *,
    keylog: bool,
    tickets: int = 2,
) -> dict[str, Any]:
    return {
        "protocol": protocol,
        "min": min_v,
        "max": max_v,
        "verify": verify,
        "check_hostname": check_hostname,
        "options": options,
        "tickets": tickets,
        "cas": cas,
        "keylog": keylog,
        "verify_flags": FLAGS,
        "post_handshake_auth": False,
    }


@pytest.fixture
def pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Pki:
    system = Pki(tmp_path / "system")  # stands in for the system trust store
    monkeypatch.setenv("SSL_CERT_FILE", str(system.root / "ca.crt"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "keys"))  # honoured by some contexts
    return Pki(tmp_path / "ca")


def test_peer_link_contexts(pki: Pki) -> None:
    files = pki.issue("host", "esx-01")
    opts = PLAIN_OPTS | ssl.OP_NO_COMPRESSION
    assert settings(tls.server_context(files)) == want(
        SERVER, V13, V13, ssl.CERT_REQUIRED, False, opts, 1, keylog=False, tickets=0
    )
    assert settings(tls.client_context(files)) == want(
        CLIENT, V13, V13, ssl.CERT_REQUIRED, False, opts, 1, keylog=False
    )


def test_relay_egress_client_context(pki: Pki) -> None:
    files = pki.issue("host", "esx-01")
    for cfg in (ClientTls(ca=files.ca), ClientTls(ca=files.ca, cert=files.cert, key=files.key)):
        assert settings(cfg.context()) == want(
            CLIENT, V12, ANY, ssl.CERT_REQUIRED, True, DEFAULT_OPTS, 1, keylog=True
        )


def test_vspc_server_context(pki: Pki) -> None:
    files = pki.issue("appliance", "vspc-1")
    assert settings(ServerTls(files.cert, files.key).context()) == want(
        SERVER, V12, ANY, ssl.CERT_NONE, False, DEFAULT_OPTS, 0, keylog=True
    )
    # a client CA: client certificates required, signed by that CA only
    assert settings(ServerTls(files.cert, files.key, files.ca).context()) == want(
        SERVER, V12, ANY, ssl.CERT_REQUIRED, False, DEFAULT_OPTS, 1, keylog=True
    )


def test_console_contexts(pki: Pki) -> None:
    files = pki.issue("appliance", "vspc-1")
    tcp = ConsoleTcpConfig(cert=files.cert, key=files.key, client_ca=files.ca)
    assert settings(console_endpoint.server_ssl_context(tcp)) == want(
        SERVER, V12, ANY, ssl.CERT_REQUIRED, False, PLAIN_OPTS, 1, keylog=False
    )
    ep = console_client.Endpoint(host="h", port=1, cert=files.cert, key=files.key, ca=files.ca)
    assert settings(console_client.client_ssl_context(ep)) == want(
        CLIENT, V12, ANY, ssl.CERT_REQUIRED, True, DEFAULT_OPTS, 1, keylog=True
    )
    # no CA given: the system store
    bare = console_client.Endpoint(host="h", port=1)
    assert settings(console_client.client_ssl_context(bare)) == want(
        CLIENT, V12, ANY, ssl.CERT_REQUIRED, True, DEFAULT_OPTS, 1, keylog=True
    )
