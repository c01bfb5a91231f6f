"""A relay where sessions end (``[[peer.listen]]`` with an egress) checks every
origin header from its peers against the identity grammar before passing it on:
an authenticated peer's traversal name is refused and counted, its honest stream
on the same link arrives byte-exact."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from common.link.route import Route, Router
from common.proto.link.header import OriginHeader, encode_header
from relay.config import loads_config
from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import Appliance, pattern, start_relay
from tests.relay.test_mesh_ops import egress_toml
from tests.support.waiting import wait_until


@pytest.mark.parametrize("vm", ["../../../outside/x", "vm\u2028forged", "x" * 65])
async def test_a_peer_header_outside_the_grammar_is_refused_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, vm: str
) -> None:
    pki = Pki(tmp_path)
    app = Appliance(echo=False)
    caplog.set_level(logging.WARNING, "relay.mesh")
    async with trio.open_nursery() as n:
        await app.serve_tcp(n)
        b = await start_relay(
            n, loads_config(egress_toml(pki.issue("host", "esx-b"), app.port, (0,)))
        )
        host, port = b.mesh.bound()[0][:2]
        router = Router(
            Route(f"tcp:{host}:{port}", identity="vic://host/esx-b", name="t"),
            n,
            tls_files=pki.issue("host", "esx-a"),
        )
        data = pattern(100_000, 4)
        with trio.fail_after(30):
            bad = await router.open_stream(encode_header(OriginHeader("esx-a", vm, "tcp", "com1")))
            with pytest.raises(trio.BrokenResourceError, match="bad origin header"):
                await bad.send_all(b"forged")
                await bad.receive_some(100)
            good = await router.open_stream(
                encode_header(OriginHeader("esx-a", "vm-1", "tcp", "com1"))
            )
            await good.send_all(data)
            got = (await app.wait_streams(1))[0]
            await wait_until(lambda: len(got.data) >= len(data), 30, "the good stream's bytes")
        assert bytes(got.data) == data and got.header.vm == "vm-1"
        assert [r.header.vm for r in app.streams] == ["vm-1"]
        assert (
            b.metrics.registry.get_sample_value(
                "relay_headers_refused_total", {"reason": "malformed"}
            )
            == 1
        )
        lines = [caplog.handler.format(r) for r in caplog.records if "refused" in r.getMessage()]
        assert len(lines) == 1 and len(lines[0].splitlines()) == 1, lines
        n.cancel_scope.cancel()
