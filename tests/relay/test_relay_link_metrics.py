"""The peer link's own metrics on real relays (TLS peer link through a FaultProxy):
replay-buffer bytes rise while the path is stalled and fall back once acknowledged,
a cut link counts as a reconnect of its route, and the keepalive RTTs are a
histogram per route. Read over the relay's Prometheus endpoint, as an operator would."""

from __future__ import annotations

from pathlib import Path

import trio

from relay.config import MetricsConfig
from relay.daemon import RelayDaemon
from tests.relay.meshfix import pair_through_proxy, stream_through
from tests.relay.relayfix import Appliance, pattern, roundtrip
from tests.support.daemons import Samples, scrape_metrics
from tests.support.waiting import wait_until, wait_until_async

ROUTE = (("route", "appliance"),)


def sample(d: RelayDaemon, name: str, **labels: str) -> float | None:
    return d.metrics.registry.get_sample_value(name, labels)


async def scrape(d: RelayDaemon) -> Samples:
    assert d.metrics_port is not None
    return await scrape_metrics("127.0.0.1", d.metrics_port)


async def test_replay_bytes_reconnects_and_rtt(tmp_path: Path) -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        a, _b, proxy = await pair_through_proxy(
            n, tmp_path, app, metrics=MetricsConfig(host="127.0.0.1", port=0)
        )
        s = await stream_through(a, "vm1")
        with trio.fail_after(60):
            assert await roundtrip(s, b"hello") == b"hello"
            assert (await scrape(a))[("relay_peer_link_reconnects_total", ROUTE)] == 0
            # Stalled path: what esx-a sends stays in its replay buffer, unacknowledged.
            proxy.stall()
            data = pattern(200_000, 5)
            await s.send_all(data)
            await wait_until(lambda: (sample(a, "relay_replay_buffer_bytes") or 0) > 0, 30)
            proxy.resume()
            got = bytearray()
            while len(got) < len(data):
                got += await s.receive_some(65536)
            assert got == data
            await wait_until(lambda: sample(a, "relay_replay_buffer_bytes") == 0, 30)
            # A cut: the route's next link is a reconnect, and the stream goes on.
            proxy.cut()
            assert await roundtrip(s, b"again") == b"again"
            scraped = await scrape(a)
            assert scraped[("relay_peer_link_reconnects_total", ROUTE)] >= 1
            assert scraped[("relay_replay_buffer_bytes", ())] >= 0

            async def rtt_observed() -> bool:
                samples = await scrape(a)
                return samples.get(("relay_peer_link_rtt_seconds_count", ROUTE), 0) >= 2

            await wait_until_async(rtt_observed, 30)  # the keepalive pings every second
            samples = await scrape(a)
            count = samples[("relay_peer_link_rtt_seconds_count", ROUTE)]
            assert 0 < samples[("relay_peer_link_rtt_seconds_sum", ROUTE)] / count < 5.0
            inf = (("le", "+Inf"), *ROUTE)
            assert samples[("relay_peer_link_rtt_seconds_bucket", inf)] == count
            assert ("relay_peer_link_rtt_seconds", ROUTE) not in samples  # no gauge any more
        n.cancel_scope.cancel()
