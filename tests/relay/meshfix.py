"""Two relays and a peer mesh between them, for the mesh tests: esx-a (the VMs'
host) and esx-b (the appliance's), their configs, and a link the test can cut."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import trio

from common.link.config import LinkTuning, PeerConfig, PeerListen, PeerRoute, PeerTls
from common.link.tls import TlsFiles
from relay.config import EgressConfig, RelayConfig, TcpListener
from relay.daemon import RelayDaemon
from tests.relay.faultproxy import FaultProxy
from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import Appliance, relay_config, start_relay, tcp_egress

FAST = LinkTuning(ping_interval=1.0, dead_after=5.0, resume_timeout=20.0)


def ptls(f: TlsFiles) -> PeerTls:
    return PeerTls(f.cert, f.key, f.ca)


def ingress_cfg(
    name: str, files: TlsFiles, address: str, peer: str, **peer_kw: object
) -> RelayConfig:
    return relay_config(
        EgressConfig(kind="peer", route="appliance"),
        host=name,
        tcp=(
            TcpListener(name="vm1", vm="vm-1", port=0),
            TcpListener(name="vm2", vm="vm-2", port=0),
        ),
        peer=PeerConfig(
            tls=ptls(files),
            link=FAST,
            routes={"appliance": PeerRoute(address, identity=peer)},
            **peer_kw,  # type: ignore[arg-type]
        ),
    )


def egress_cfg(
    name: str, files: TlsFiles, app_port: int, allowed: list[str], forward: str = ""
) -> RelayConfig:
    return relay_config(
        tcp_egress(app_port),
        host=name,
        peer=PeerConfig(
            tls=ptls(files),
            link=FAST,
            listen=[PeerListen("tcp:127.0.0.1:0", allowed_peers=allowed, forward=forward)],
        ),
    )


def peer_address(d: RelayDaemon) -> str:
    host, port = d.mesh.bound()[0][:2]
    return f"tcp:{host}:{port}"


async def stream_through(d: RelayDaemon, listener: str) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", d.bound[listener][1])


async def appliance_side(n: trio.Nursery, pki: Pki, app: Appliance) -> RelayDaemon:
    """Relay esx-b: takes esx-a's peer link, ends the sessions and delivers them to
    ``app`` over TCP (which it starts serving)."""
    await app.serve_tcp(n)
    return await start_relay(
        n, egress_cfg("esx-b", pki.issue("host", "esx-b"), app.port, ["vic://host/esx-a"])
    )


def esx_a(pki: Pki, address: str, **changes: object) -> RelayConfig:
    """Relay esx-a: VMs on listeners vm1 and vm2, a TLS peer link to esx-b at
    ``address``; ``changes`` replace fields of its config."""
    return replace(
        ingress_cfg("esx-a", pki.issue("host", "esx-a"), address, "vic://host/esx-b"),
        **changes,  # type: ignore[arg-type]
    )


async def deliver_pair(
    n: trio.Nursery, tmp_path: Path, app: Appliance, **a_changes: object
) -> tuple[RelayDaemon, RelayDaemon]:
    """Relay esx-a (VMs) -> TLS peer link -> relay esx-b, which ends the sessions and
    delivers to ``app`` over TCP."""
    pki = Pki(tmp_path)
    b = await appliance_side(n, pki, app)
    a = await start_relay(n, esx_a(pki, peer_address(b), **a_changes))
    return a, b


async def pair_through_proxy(
    n: trio.Nursery, tmp_path: Path, app: Appliance, **a_changes: object
) -> tuple[RelayDaemon, RelayDaemon, FaultProxy]:
    """As ``deliver_pair``, esx-a's peer link through a FaultProxy (the test cuts it)."""
    pki = Pki(tmp_path)
    b = await appliance_side(n, pki, app)
    proxy = FaultProxy(tuple(b.mesh.bound()[0][:2]))
    await n.start(proxy.serve)
    a = await start_relay(n, esx_a(pki, proxy.address, **a_changes))
    return a, b, proxy


async def echo_with_cuts(
    s: trio.abc.Stream, proxy: FaultProxy, data: bytes, cut_at: list[int], *, eof: bool = False
) -> bytes:
    """Send ``data`` in 100 kB pieces (then EOF, if ``eof``) while reading the echo;
    ``proxy`` cuts the link each time the echo passes the next offset in ``cut_at``
    (bytes in flight both ways). The echo: all of ``data``'s length, or up to EOF."""
    got = bytearray()

    async def reader() -> None:
        while eof or len(got) < len(data):
            chunk = await s.receive_some(65536)
            if not chunk:
                break
            got.extend(chunk)
            if cut_at and len(got) >= cut_at[0]:
                cut_at.pop(0)
                proxy.cut()

    async with trio.open_nursery() as m:
        m.start_soon(reader)
        for i in range(0, len(data), 100_000):
            await s.send_all(data[i : i + 100_000])
        if eof:
            await s.send_eof()  # type: ignore[attr-defined]
    return bytes(got)
