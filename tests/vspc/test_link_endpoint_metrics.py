"""The appliance side of the peer links in its /metrics text, as the relay side has
them: keepalive RTTs as a histogram, links accepted and reconnects, cuts, resumed
streams and replay bytes; a real relay's TLS link through a FaultProxy that the test
cuts while a stream carries on byte-exact."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import trio

from common.link.config import LinkTuning
from tests.relay.faultproxy import FaultProxy
from tests.relay.meshfix import FAST, ingress_cfg, ptls, stream_through
from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import pattern, start_relay
from tests.relay.test_mesh_daemon import wait_console_bytes
from tests.support.daemons import Samples, scrape_metrics
from tests.support.waiting import wait_until_async
from tests.vspc.conftest import make_config
from vspc.config import EndpointConfig, LinkListen
from vspc.endpoint import Endpoint
from vspc.service import VspcService


async def scrape(svc: VspcService) -> Samples:
    assert svc.metrics_port is not None
    return await scrape_metrics("127.0.0.1", svc.metrics_port)


async def test_link_rtt_reconnects_and_resumes_in_the_metrics_text(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    vcfg = replace(
        make_config(tmp_path),
        endpoint=EndpointConfig(
            link_tls=ptls(pki.issue("appliance", "vch-1")),
            link=(LinkListen("tcp:127.0.0.1:0", allowed_peers=["vic://host/esx-a"]),),
            link_tuning=LinkTuning(ping_interval=0.2, dead_after=5.0, resume_timeout=20.0),
        ),
    )
    async with trio.open_nursery() as n:
        svc = VspcService(vcfg)
        await n.start(svc.run)
        ep = await n.start(Endpoint(svc).run)
        proxy = FaultProxy(tuple(ep.links.bound[0][:2]))
        await n.start(proxy.serve)
        cfg = ingress_cfg(
            "esx-a", pki.issue("host", "esx-a"), proxy.address, "vic://appliance/vch-1"
        )
        assert cfg.peer is not None
        a = await start_relay(n, replace(cfg, peer=replace(cfg.peer, link=FAST)))
        with trio.fail_after(40):
            vm = await stream_through(a, "vm1")
            one, two = pattern(100_000, 1), pattern(100_000, 2)
            await vm.send_all(one)
            await wait_console_bytes(svc, "vm-1", len(one))
            got = await scrape(svc)
            assert got[("vspc_peer_links", ())] == 1
            assert got[("vspc_peer_links_accepted_total", ())] == 1
            assert got[("vspc_peer_link_reconnects_total", ())] == 0
            assert got[("vspc_resumes_total", ())] == 0

            async def pinged(k: int) -> bool:
                return (await scrape(svc)).get(("vspc_peer_link_rtt_seconds_count", ()), 0) >= k

            await wait_until_async(lambda: pinged(2), 20)
            proxy.cut()  # the relay reconnects and its stream resumes on the new link
            await vm.send_all(two)
            await wait_console_bytes(svc, "vm-1", len(one) + len(two))
            got = await scrape(svc)
            assert got[("vspc_peer_links", ())] == 1
            assert got[("vspc_peer_links_accepted_total", ())] == 2
            assert got[("vspc_peer_link_reconnects_total", ())] == 1
            assert got[("vspc_peer_link_cuts_total", ())] == 1
            assert got[("vspc_resumes_total", ())] == 1
            assert got[("vspc_replay_buffer_bytes", ())] >= 0
            count = got[("vspc_peer_link_rtt_seconds_count", ())]
            assert got[("vspc_peer_link_rtt_seconds_bucket", (("le", "+Inf"),))] == count
            assert 0 < got[("vspc_peer_link_rtt_seconds_sum", ())] / count < 5.0
            assert (
                "vspc_tls_refused_total",
                (("listener", "link"), ("reason", "revoked")),
            ) not in got
        n.cancel_scope.cancel()
