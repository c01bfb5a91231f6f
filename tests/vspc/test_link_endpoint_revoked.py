"""The appliance's link endpoint and a revoked relay: its live link is closed when the
vSPC sees the CRL change (the file watcher's reload, no SIGHUP) and its reconnects
fail the handshake (``vspc_tls_refused_total{listener="link",reason="revoked"}``);
another relay carries on."""

from __future__ import annotations

from pathlib import Path

import trio

from common.io import certs, revocation
from tests.relay.meshfix import ingress_cfg, ptls, stream_through
from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import pattern, start_relay
from tests.relay.test_mesh_daemon import wait_console_bytes
from tests.support.waiting import wait_until
from vspc.config import EndpointConfig, LinkListen, VspcConfig
from vspc.console.config import ConsoleConfig
from vspc.endpoint import Endpoint
from vspc.service import VspcService


async def test_revoked_relay_link_is_cut_at_the_appliance(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    vcfg = VspcConfig(
        console=ConsoleConfig(log_dir=tmp_path / "logs"),
        endpoint=EndpointConfig(
            link_tls=ptls(pki.issue("appliance", "vch-1")),
            link=(
                LinkListen(
                    "tcp:127.0.0.1:0", allowed_peers=["vic://host/esx-a", "vic://host/esx-b"]
                ),
            ),
        ),
    )
    async with trio.open_nursery() as n:
        svc = VspcService(vcfg)
        await n.start(svc.run)
        ep = await n.start(Endpoint(svc).run)
        host, port = ep.links.bound[0][:2]
        address = f"tcp:{host}:{port}"
        a_files = pki.issue("host", "esx-a")
        a = await start_relay(n, ingress_cfg("esx-a", a_files, address, "vic://appliance/vch-1"))
        b_files = pki.issue("host", "esx-b")
        b = await start_relay(n, ingress_cfg("esx-b", b_files, address, "vic://appliance/vch-1"))
        server = next(iter(ep.links._runs.values())).server
        with trio.fail_after(30):
            va, vb = await stream_through(a, "vm1"), await stream_through(b, "vm2")
            await va.send_all(b"a before")
            await vb.send_all(b"b before")
            await wait_console_bytes(svc, "vm-1", 8)
            await wait_console_bytes(svc, "vm-2", 8)
            assert len(server.links) == 2
            link_a = a.mesh.routers["appliance"].link
            assert link_a is not None
            revocation.revoke(pki.root, certs.load_cert(a_files.cert).serial_number)
            await wait_until(lambda: not link_a.alive, what="esx-a's link closed")
            assert [lk.peer_identity for lk in server.links] == ["vic://host/esx-b"]
            # esx-a's reconnects are refused in the handshake; esx-b carries on
            refused = server.refused
            await wait_until(lambda: server.refused > refused, what="esx-a's reconnect refused")
            revoked = svc.metrics.registry.get_sample_value(
                "vspc_tls_refused_total", {"listener": "link", "reason": "revoked"}
            )
            assert revoked is not None and revoked >= 2  # the cut and a refused reconnect
            more = pattern(200_000, 5)
            await vb.send_all(more)
            await wait_console_bytes(svc, "vm-2", 8 + len(more))
        n.cancel_scope.cancel()
