"""tlsrefresh: a context re-reads its changed files in place (a half-done renewal
leaves it as it was); CertExpiry follows the files it is given."""

from __future__ import annotations

import logging
import shutil
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from common.io import certs, revocation, tlsctx, tlsrefresh
from common.io.certwatch import CertExpiry
from common.link.tls import peer_serial


async def served_serial(ctx_server: ssl.SSLContext, ca: Path) -> int | None:
    """Handshake over a socket pair with the server context; the serial it shows."""
    a, b = trio.testing.memory_stream_pair()
    server = trio.SSLStream(a, ctx_server, server_side=True)
    client = trio.SSLStream(b, tlsctx.client_context(ca=ca), server_hostname="vch.local")
    async with trio.open_nursery() as n:
        n.start_soon(server.do_handshake)
        n.start_soon(client.do_handshake)
    return peer_serial(client)


async def test_half_renewal_keeps_the_old_pair_then_takes_the_new(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    certs.init_ca(tmp_path)
    leaf = certs.issue(tmp_path, "appliance", "vch", dns_names=("vch.local",))
    ca = tmp_path / certs.CA_CERT
    ctx = tlsctx.server_context(leaf.cert_path, leaf.key_path)
    old = certs.load_cert(leaf.cert_path).serial_number
    assert tlsrefresh.refresh() == 0
    # a renewal elsewhere, its key copied in first: cert and key do not match yet
    other = certs.issue(
        tmp_path, "appliance", "vch", out_dir=tmp_path / "new", dns_names=("vch.local",)
    )
    shutil.copy(other.key_path, leaf.key_path)
    with caplog.at_level(logging.ERROR, "tls"):
        assert tlsrefresh.refresh() == 0
    assert "cannot re-read" in caplog.text
    assert await served_serial(ctx, ca) == old
    shutil.copy(other.cert_path, leaf.cert_path)
    assert tlsrefresh.refresh() == 1
    assert await served_serial(ctx, ca) == certs.load_cert(other.cert_path).serial_number


async def test_a_new_crl_turns_on_the_leaf_check(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    ca = tmp_path / certs.CA_CERT
    srv = certs.issue(tmp_path, "appliance", "vch", dns_names=("vch.local",))
    ctx = tlsctx.server_context(srv.cert_path, srv.key_path)
    client_ctx = tlsctx.client_context(ca=ca)
    assert not client_ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    revocation.revoke(tmp_path, certs.load_cert(srv.cert_path).serial_number)
    assert tlsrefresh.refresh() >= 1
    rebuilt = tlsrefresh.successor(client_ctx)  # makes the client's new connections
    assert rebuilt is not None and rebuilt.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    a, b = trio.testing.memory_stream_pair()
    server = trio.SSLStream(a, ctx, server_side=True)
    client = trio.SSLStream(b, client_ctx, server_hostname="vch.local")

    async def serve() -> None:
        with pytest.raises(trio.BrokenResourceError):  # the client's alert
            await server.do_handshake()

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(serve)
            with pytest.raises(trio.BrokenResourceError) as e:
                await client.do_handshake()
            await trio.aclose_forcefully(b)  # the server sees the end
    assert "revoked" in str(e.value.__cause__)


def test_cert_expiry_gauge_follows_its_files(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    leaf = certs.issue(tmp_path, "host", "a", days=10)
    reg = CollectorRegistry()
    gauge = CertExpiry("relay", reg)
    name = "relay_cert_not_after_timestamp_seconds"
    gauge.update([(leaf.cert_path, "peer.tls.cert"), (tmp_path / "ca.crt", "peer.tls.ca")])
    assert reg.get_sample_value(name, {"cert": "peer.tls.cert"}) == leaf.not_after.timestamp()
    gauge.update([(tmp_path / "ca.crt", "peer.tls.ca")])
    assert reg.get_sample_value(name, {"cert": "peer.tls.cert"}) is None
    assert reg.get_sample_value(name, {"cert": "peer.tls.ca"}) is not None
