"""The relay daemon in-process: TCP ingress to a stand-in appliance, reload and
drain under live traffic, limits and hostile peers."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import trio
import trio.testing

from relay.config import LimitsConfig, TcpListener, TimeoutsConfig, VspcListener
from relay.metrics import TO_APPLIANCE, TO_VM
from tests.relay.relayfix import Appliance, pattern, relay_config, roundtrip, start_relay, tcp_egress


async def test_tcp_roundtrip_header_and_live_metrics() -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(tcp_egress(port), tcp=(TcpListener(name="vm1-com1", vm="vm1", port=0),))
        d = await start_relay(n, cfg)
        rport = d.bound["vm1-com1"][1]
        s = await trio.open_tcp_stream("127.0.0.1", rport)
        data = pattern(300_000)
        assert await roundtrip(s, data) == data
        (rec,) = await app.wait_streams(1)
        assert rec.header.host == "esx-test"
        assert (rec.header.vm, rec.header.kind, rec.header.label) == ("vm1", "tcp", "serial0")
        assert rec.header.stream_id
        # Live: counted while the stream is still open.
        assert d.metrics.bytes_total("vm1-com1", TO_APPLIANCE) == len(data)
        assert d.metrics.bytes_total("vm1-com1", TO_VM) == len(data)
        assert d.metrics.active("vm1-com1") == 1
        await s.aclose()
        await rec.closed.wait()
        await d.terminate()
        await d.stopped.wait()
        assert d.metrics.active() == 0
        assert d.metrics.bytes_total("vm1-com1", TO_APPLIANCE) == len(data)
        n.cancel_scope.cancel()
