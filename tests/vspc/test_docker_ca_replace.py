"""The Docker TCP+TLS endpoint when its client CA file is replaced (the new CA written
over the old one): after the reload an operator whose certificate only the old CA
signed is refused in the handshake (``vspc_tls_refused_total{listener="docker",
reason="unknown_ca"}``), one from the new CA is served, and a connection made before
carries on (real TLS, our own CAs)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trio
import trio.testing

from common.io import certs, tlsctx, tlsrefresh
from common.io.tlsconfig import ServerTls
from vspc.docker.server import DockerServer
from vspc.docker_config import DockerConfig, DockerTcpConfig
from vspc.metrics import VspcMetrics

from .test_docker_tls_revoked_live import _ping


async def test_operator_of_a_replaced_client_ca_is_refused(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for d in (old, new):
        certs.init_ca(d)
        certs.issue(d, "operator", "alice")
    server = certs.issue(old, "appliance", "vch", dns_names=("vch.local",))
    client_ca = tmp_path / "docker-clients-ca.crt"
    shutil.copy(old / certs.CA_CERT, client_ca)
    both = tmp_path / "both.crt"  # operators trust the server whatever the client CA
    both.write_bytes((old / certs.CA_CERT).read_bytes() + (new / certs.CA_CERT).read_bytes())
    tcp = DockerTcpConfig(port=0, tls=ServerTls(server.cert_path, server.key_path, client_ca))
    metrics = VspcMetrics.create()
    srv = DockerServer(DockerConfig(enabled=True, socket=None, tcp=tcp), None, metrics=metrics)
    await nursery.start(srv.run)
    host, port = srv.tcp_addresses[0]

    async def connect(d: Path) -> trio.SSLStream[trio.SocketStream]:
        crt = d / "operator-alice.crt"
        ctx = tlsctx.client_context(ca=both, cert=crt, key=crt.with_suffix(".key"))
        tls = trio.SSLStream(
            await trio.open_tcp_stream(host, port), ctx, server_hostname="vch.local"
        )
        assert b"200 OK" in await _ping(tls)
        return tls

    def refused() -> float | None:
        return metrics.registry.get_sample_value(
            "vspc_tls_refused_total", {"listener": "docker", "reason": "unknown_ca"}
        )

    with trio.fail_after(20):
        before = await connect(old)
        with pytest.raises((trio.BrokenResourceError, AssertionError)):
            await connect(new)  # not trusted yet
        tmp = client_ca.with_suffix(".tmp")
        shutil.copy(new / certs.CA_CERT, tmp)
        os.replace(tmp, client_ca)
        assert tlsrefresh.refresh() >= 1  # what SIGHUP and the file watcher run
        await trio.testing.wait_all_tasks_blocked()
        refusals = refused()
        with pytest.raises((trio.BrokenResourceError, AssertionError)):
            await connect(old)  # refused: in the handshake or at the first read
        await trio.testing.wait_all_tasks_blocked()
        assert (refused() or 0) == (refusals or 0) + 1
        after = await connect(new)
        assert b"200 OK" in await _ping(before)  # made under the old CA, carries on
        await before.aclose()
        await after.aclose()
