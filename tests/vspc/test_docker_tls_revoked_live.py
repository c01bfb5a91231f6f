"""A revoked operator's live Docker TCP+TLS connection is closed on reload (the CRL
changed), another operator's carries on; her next handshake is refused and counted
(``vspc_tls_refused_total{listener="docker"}``; real TLS, our own CA)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio
import trio.testing

from common.io import certs, revocation, tlsctx, tlsrefresh
from common.io.tlsconfig import ServerTls
from vspc.docker.server import DockerServer
from vspc.docker_config import DockerConfig, DockerTcpConfig
from vspc.metrics import VspcMetrics

PING = b"GET /_ping HTTP/1.1\r\nHost: vch\r\n\r\n"


async def _ping(tls: trio.SSLStream[trio.SocketStream]) -> bytes:
    await tls.send_all(PING)
    got = b""
    while not got.endswith(b"\r\n\r\nOK"):  # head and body (Content-Length: 2)
        chunk = await tls.receive_some(4096)
        assert chunk, got
        got += chunk
    return got


async def test_revoked_operators_live_docker_connection_is_cut(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    ca_dir = tmp_path / "ca"
    certs.init_ca(ca_dir)
    server = certs.issue(ca_dir, "appliance", "vch", dns_names=("vch.local",))
    ca = ca_dir / certs.CA_CERT
    tcp = DockerTcpConfig(port=0, tls=ServerTls(server.cert_path, server.key_path, ca))
    metrics = VspcMetrics.create()
    srv = DockerServer(DockerConfig(enabled=True, socket=None, tcp=tcp), None, metrics=metrics)
    await nursery.start(srv.run)
    host, port = srv.tcp_addresses[0]

    async def connect(name: str) -> trio.SSLStream[trio.SocketStream]:
        crt = ca_dir / f"operator-{name}.crt"
        if not crt.exists():
            certs.issue(ca_dir, "operator", name)
        ctx = tlsctx.client_context(ca=ca, cert=crt, key=crt.with_suffix(".key"))
        tls = trio.SSLStream(
            await trio.open_tcp_stream(host, port), ctx, server_hostname="vch.local"
        )
        assert b"200 OK" in await _ping(tls)
        return tls

    with trio.fail_after(20):
        alice, bob = await connect("alice"), await connect("bob")
        revocation.revoke(
            ca_dir, peer := certs.load_cert(ca_dir / "operator-alice.crt").serial_number
        )
        tlsrefresh.refresh()  # what SIGHUP / the CRL file watcher run
        with contextlib.suppress(trio.BrokenResourceError):
            while await alice.receive_some(4096):  # alice's connection ends
                pass
        assert b"200 OK" in await _ping(bob)  # bob's carries on
        assert f"serial {peer:x}) is revoked" in caplog.text
        got = metrics.registry.get_sample_value(
            "vspc_tls_refused_total", {"listener": "docker", "reason": "revoked"}
        )
        assert got == 1
        await bob.aclose()
        with pytest.raises((trio.BrokenResourceError, AssertionError)):  # alice again
            await connect("alice")  # refused: in the handshake or at the first read
        await trio.testing.wait_all_tasks_blocked()
        got = metrics.registry.get_sample_value(
            "vspc_tls_refused_total", {"listener": "docker", "reason": "revoked"}
        )
        assert got == 2
