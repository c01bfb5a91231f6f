"""Hybrid vsock, guest-initiated: the VMM connects to <uds_path>_<port>; the
socket path is the VM's identity. The test plays the VMM."""

from __future__ import annotations

from pathlib import Path

import trio

from relay.config import HvsockListener
from tests.relay.relayfix import (
    Appliance,
    pattern,
    relay_config,
    roundtrip,
    start_relay,
    tcp_egress,
)


async def test_guest_initiated_streams(tmp_path: Path) -> None:
    app = Appliance()
    uds = tmp_path / "fc-vm7.vsock"
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port),
            hvsock=(
                HvsockListener(name="vm7-52", vm="vm7", uds_path=uds, port=52),
                HvsockListener(
                    name="vm8-52", vm="vm8", uds_path=tmp_path / "fc-vm8.vsock", port=52
                ),
            ),
        )
        d = await start_relay(n, cfg)
        assert d.bound["vm7-52"] == f"{uds}_52"
        # Two concurrent guest connections from vm7, one from vm8.
        s1 = await trio.open_unix_socket(f"{uds}_52")
        s2 = await trio.open_unix_socket(f"{uds}_52")
        s3 = await trio.open_unix_socket(f"{tmp_path}/fc-vm8.vsock_52")
        for i, s in enumerate((s1, s2, s3)):
            data = pattern(70_000, seed=i)
            assert await roundtrip(s, data) == data
        recs = await app.wait_streams(3)
        assert sorted(r.header.vm for r in recs) == ["vm7", "vm7", "vm8"]
        assert {r.header.label for r in recs} == {"vsock-52"}
        assert {r.header.kind for r in recs} == {"hvsock"}
        for s in (s1, s2, s3):
            await s.aclose()
        await d.terminate()
        await d.stopped.wait()
        assert not await trio.Path(f"{uds}_52").exists()
        n.cancel_scope.cancel()


async def test_stale_socket_file_is_replaced_but_not_a_regular_file(tmp_path: Path) -> None:
    import socket

    uds = tmp_path / "vm.vsock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(f"{uds}_5")
    stale.close()  # a socket file left behind by a crashed relay
    (tmp_path / "other.vsock_5").write_text("not a socket")
    app = Appliance()
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port), hvsock=(HvsockListener(name="h", vm="v", uds_path=uds, port=5),)
        )
        d = await start_relay(n, cfg)
        s = await trio.open_unix_socket(f"{uds}_5")
        assert await roundtrip(s, b"ping") == b"ping"
        # A reload that adds a listener on a regular file fails that one only.
        bad = HvsockListener(name="bad", vm="w", uds_path=tmp_path / "other.vsock", port=5)
        ok = await d.reload(relay_config(tcp_egress(port), hvsock=(cfg.hvsock[0], bad)))
        assert not ok
        assert "bad" not in d.bound and "h" in d.bound
        assert (tmp_path / "other.vsock_5").read_text() == "not a socket"
        assert await roundtrip(s, b"still here") == b"still here"
        await s.aclose()
        n.cancel_scope.cancel()
