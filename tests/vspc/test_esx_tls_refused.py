"""A TLS handshake that fails on the ESX listener (``[listen.tls]``) is counted in
``vspc_tls_refused_total{listener="esx",reason}``; a good handshake is not."""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import trio

from common.io import certs, tlsctx
from common.io.tlsconfig import ServerTls
from tests.support.waiting import wait_until
from vspc.service import VspcService

from .conftest import make_config


def esx_refused(service: VspcService) -> float:
    """All of ``vspc_tls_refused_total{listener="esx"}`` (the reason depends on
    whether the client's alert or its close is read first)."""
    return sum(
        s.value
        for m in service.metrics.registry.collect()
        if m.name == "vspc_tls_refused"
        for s in m.samples
        if s.name.endswith("_total") and s.labels.get("listener") == "esx"
    )


async def test_refused_handshake_on_the_esx_listener_is_counted(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    ca_dir, other_dir = tmp_path / "ca", tmp_path / "other"
    certs.init_ca(ca_dir)
    certs.init_ca(other_dir)
    leaf = certs.issue(ca_dir, "appliance", "vch", dns_names=("vch.local",))
    base = make_config(tmp_path)
    config = replace(
        base, listen=replace(base.listen, tls=ServerTls(leaf.cert_path, leaf.key_path))
    )
    service: VspcService = await nursery.start(VspcService(config).run)
    assert service.esx_port is not None
    with trio.fail_after(20):
        for ca in (ca_dir, other_dir):  # the second client does not trust the server
            ctx = tlsctx.client_context(ca=ca / certs.CA_CERT)
            tcp = await trio.open_tcp_stream("127.0.0.1", service.esx_port)
            tls = trio.SSLStream(tcp, ctx, server_hostname="vch.local")
            try:
                await tls.do_handshake()
                assert await tls.receive_some(100)  # the server's Telnet opening: it is in
            except trio.BrokenResourceError as e:
                assert isinstance(e.__cause__, ssl.SSLCertVerificationError) and ca == other_dir
            await trio.aclose_forcefully(tls)
        await wait_until(lambda: esx_refused(service) > 0)
        assert esx_refused(service) == 1  # the good handshake is not counted
