"""Network serial as raw TCP (server and client mode) and the vSPC Telnet
pass-through, with socat as the independent peer on the ESX side."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from relay.config import TcpListener, VspcListener
from relay.metrics import TO_APPLIANCE
from tests.relay.relayfix import (
    Appliance,
    pattern,
    relay_config,
    roundtrip,
    socat_client,
    start_relay,
    tcp_egress,
)
from tests.support.daemons import free_port

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")


async def test_server_mode_socat_client_byte_exact() -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(tcp_egress(port), tcp=(TcpListener(name="com1", vm="vm-a", port=0),))
        d = await start_relay(n, cfg)
        rport = d.bound["com1"][1]
        data = pattern(200_000, seed=3)
        out = await socat_client(["-t", "10", "STDIO", f"TCP:127.0.0.1:{rport}"], data)
        assert out == data
        (rec,) = app.streams
        assert rec.header.vm == "vm-a" and rec.header.kind == "tcp"
        assert bytes(rec.data) == data
        await d.terminate()
        n.cancel_scope.cancel()


async def test_client_mode_reconnects_to_socat_server(tmp_path: Path) -> None:
    """ESX's serial port in server mode is socat listening; the relay connects out,
    and connects again when the VM end comes back."""
    app = Appliance(echo=False)
    esx_port = free_port()
    async with trio.open_nursery() as n:
        aport = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(aport),
            tcp=(TcpListener(name="vm-b", vm="vm-b", mode="client", port=esx_port),),
        )
        await start_relay(n, cfg)  # nothing listens yet: the relay retries
        for i in range(2):
            f = tmp_path / f"vm-out-{i}"
            payload = pattern(50_000, seed=i)
            f.write_bytes(payload)
            with trio.fail_after(20):
                await trio.run_process(
                    ["socat", "-u", f"FILE:{f}", f"TCP-LISTEN:{esx_port},bind=127.0.0.1,reuseaddr"]
                )
                rec = (await app.wait_streams(i + 1))[i]
                await rec.closed.wait()
            assert rec.header.vm == "vm-b"
            assert bytes(rec.data) == payload
        n.cancel_scope.cancel()


async def test_vspc_passthrough_untouched() -> None:
    """Telnet from ESX (IAC sequences, option 232 subnegotiation, doubled 0xFF)
    reaches the appliance byte for byte."""
    app = Appliance()
    telnet = (
        # WILL BINARY, DO BINARY, WILL SGA, WILL 232
        b"\xff\xfb\x00\xff\xfd\x00\xff\xfb\x03\xff\xfb\xe8"
        b"\xff\xfa\xe8\x00\x28\x29\x2a\xff\xf0"  # SB 232 KNOWN-SUBOPTIONS-1 ... SE
        b"\xff\xfa\xe8\x28seq\xff\xffx\xff\xf0"  # VMOTION-BEGIN, 0xFF doubled
        + bytes(range(256))
        + b"\r\n\x00\x11\r"
    )
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(tcp_egress(port), vspc=(VspcListener(name="vspc", port=0),))
        d = await start_relay(n, cfg)
        s = await trio.open_tcp_stream("127.0.0.1", d.bound["vspc"][1])
        assert await roundtrip(s, telnet) == telnet
        (rec,) = app.streams
        assert rec.header.kind == "vspc" and rec.header.label == "vspc"
        assert rec.header.vm == "esx-127.0.0.1"
        assert bytes(rec.data) == telnet
        assert d.metrics.bytes_total("vspc", TO_APPLIANCE) == len(telnet)
        await s.aclose()
        n.cancel_scope.cancel()
