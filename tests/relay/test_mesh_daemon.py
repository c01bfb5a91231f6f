"""The peer mesh inside the relay daemon: [peer] routes, listeners (deliver and
forward), identity checks, link cuts, route changes by reload and admin socket,
and the appliance's own link endpoint (vspc) where sessions end to end."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from common.io.vsphere import VSphereTarget
from common.link.config import PeerRoute
from common.ops.config import ConfigError
from relay.admin import admin_request
from relay.config import loads_config
from relay.daemon import RelayDaemon
from tests.relay.meshfix import (
    deliver_pair,
    echo_with_cuts,
    egress_cfg,
    ingress_cfg,
    pair_through_proxy,
    peer_address,
    ptls,
    stream_through,
)
from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import (
    Appliance,
    pattern,
    roundtrip,
    start_relay,
)
from tests.relay.test_vsphere_route import VM, relocate, vcsim  # noqa: F401 (fixture)
from tests.support.waiting import wait_until


async def test_two_hops_deliver_byte_exact_and_header_from_origin(tmp_path: Path) -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        a, _ = await deliver_pair(n, tmp_path, app)
        s1, s2 = await stream_through(a, "vm1"), await stream_through(a, "vm2")
        with trio.fail_after(30):
            d1, d2 = pattern(3_000_000, 1), pattern(1_000_000, 2)
            async with trio.open_nursery() as m:

                async def one(s: trio.SocketStream, d: bytes) -> None:
                    assert await roundtrip(s, d) == d

                m.start_soon(one, s1, d1)
                m.start_soon(one, s2, d2)
        recs = await app.wait_streams(2)
        assert {(r.header.host, r.header.vm, r.header.kind) for r in recs} == {
            ("esx-a", "vm-1", "tcp"),
            ("esx-a", "vm-2", "tcp"),
        }
        # one link carries both streams
        assert a.mesh.routers["appliance"].links_opened == 1
        n.cancel_scope.cancel()


async def test_link_cut_mid_transfer_loses_nothing(tmp_path: Path) -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        a, _, proxy = await pair_through_proxy(n, tmp_path, app)
        s = await stream_through(a, "vm1")
        data = pattern(8_000_000, 5)
        with trio.fail_after(60):
            assert await echo_with_cuts(s, proxy, data, [1_000_000, 4_000_000]) == data
        assert proxy.cuts == 2 and a.mesh.routers["appliance"].links_opened >= 3
        assert bytes((await app.wait_streams(1))[0].data) == data
        n.cancel_scope.cancel()


async def test_header_for_another_host_is_refused_and_others_carry_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """esx-a's certificate cannot speak for esx-z: that stream is refused with a
    log line; a stream from an honest relay on the same listener is byte-exact."""
    pki = Pki(tmp_path)
    app = Appliance()
    async with trio.open_nursery() as n:
        await app.serve_tcp(n)
        b = await start_relay(
            n,
            egress_cfg(
                "esx-b",
                pki.issue("host", "esx-b"),
                app.port,
                ["vic://host/esx-a", "vic://host/esx-c"],
            ),
        )
        liar = await start_relay(
            n,
            replace(
                ingress_cfg(
                    "esx-a", pki.issue("host", "esx-a"), peer_address(b), "vic://host/esx-b"
                ),
                host="esx-z",
            ),
        )
        honest = await start_relay(
            n, ingress_cfg("esx-c", pki.issue("host", "esx-c"), peer_address(b), "vic://host/esx-b")
        )
        bad = await stream_through(liar, "vm1")
        good = await stream_through(honest, "vm1")
        with trio.fail_after(20):
            await bad.send_all(b"forged")
            assert await roundtrip(good, pattern(200_000)) == pattern(200_000)
            # the liar's stream is ended (an error reaches its relay, which closes the VM side)
            while await bad.receive_some(100):
                pass
        assert [r.header.host for r in app.streams] == ["esx-c"]
        assert any("speaks for host 'esx-z'" in r.getMessage() for r in caplog.records)
        assert (
            b.metrics.registry.get_sample_value(
                "relay_headers_refused_total", {"reason": "foreign_host"}
            )
            == 1
        )
        n.cancel_scope.cancel()


async def test_reload_and_admin_socket_move_streams_to_another_relay(tmp_path: Path) -> None:
    """The appliance's endpoint is reached through relay B, then (reload) through C,
    then (admin socket) through B again; with ``forward`` the sessions end at the
    appliance, so the stream resumes across every move with no byte lost."""
    pki = Pki(tmp_path)
    async with trio.open_nursery() as n:
        svc, fwd = await start_appliance(n, tmp_path)
        b, c = await forwarding_relays(n, pki, fwd)
        admin = tmp_path / "relay.sock"
        a_files = pki.issue("host", "esx-a")
        cfg = ingress_cfg("esx-a", a_files, peer_address(b), "vic://host/esx-b", admin_socket=admin)
        assert cfg.peer is not None
        a = await start_relay(n, cfg)
        vm = await stream_through(a, "vm1")
        data = pattern(6_000_000, 9)
        with trio.fail_after(60):
            for i in range(0, len(data), 250_000):
                await vm.send_all(data[i : i + 250_000])
                if i == 1_000_000:
                    assert await a.reload(
                        replace(
                            cfg,
                            peer=replace(
                                cfg.peer,
                                routes={
                                    "appliance": PeerRoute(
                                        peer_address(c), identity="vic://host/esx-c"
                                    )
                                },
                            ),
                        )
                    )
                if i == 3_000_000:
                    reply = await admin_request(
                        admin,
                        {
                            "cmd": "route.set",
                            "route": "appliance",
                            "address": peer_address(b),
                            "identity": "vic://host/esx-b",
                        },
                    )
                    assert reply.get("ok"), reply
            await wait_console_bytes(svc, "vm-1", len(data))
            await svc.consoles.writer.flush()  # type: ignore[attr-defined]
        logs = [p for p in (tmp_path / "logs").glob("*.log")]
        assert len(logs) == 1 and logs[0].read_bytes() == data
        assert a.mesh.routers["appliance"].route_changes == 2
        n.cancel_scope.cancel()


async def forwarding_relays(n: trio.Nursery, pki: Pki, fwd: str) -> tuple[RelayDaemon, RelayDaemon]:
    """Relays esx-b and esx-c: each accepts esx-a's links and forwards them to ``fwd``."""
    return (
        await start_relay(
            n, egress_cfg("esx-b", pki.issue("host", "esx-b"), 1, ["vic://host/esx-a"], forward=fwd)
        ),
        await start_relay(
            n, egress_cfg("esx-c", pki.issue("host", "esx-c"), 1, ["vic://host/esx-a"], forward=fwd)
        ),
    )


async def wait_console_bytes(svc: object, vm: str, n: int) -> None:
    """Until the console of ``vm`` got ``n`` bytes (the caller bounds it)."""
    from vspc.console.service import LookupFailed

    def arrived() -> bool:
        try:
            return bool(svc.consoles.find(vm).bytes_from_vm >= n)  # type: ignore[attr-defined]
        except LookupFailed:
            return False

    await wait_until(arrived, None, interval=0.02)


async def start_appliance(n: trio.Nursery, tmp_path: Path, address: str = "") -> tuple[object, str]:
    """A vspc service + endpoint whose link endpoint takes forwarded links (on a Unix
    socket unless ``address`` says otherwise); returns it and the address bound."""
    from vspc.config import EndpointConfig, LinkListen, VspcConfig
    from vspc.console.config import ConsoleConfig
    from vspc.endpoint import Endpoint
    from vspc.service import VspcService

    link_sock = tmp_path / "link.sock"
    vcfg = VspcConfig(
        console=ConsoleConfig(log_dir=tmp_path / "logs"),
        endpoint=EndpointConfig(
            link=(LinkListen(address or f"unix:{link_sock}", tls=False, forwarded=True),)
        ),
    )
    svc = VspcService(vcfg)
    await n.start(svc.run)
    ep = await n.start(Endpoint(svc).run)
    bound = ep.links.bound[0]
    return svc, (f"unix:{bound}" if isinstance(bound, str) else f"tcp:{bound[0]}:{bound[1]}")


async def test_route_follows_the_appliance_vm_in_vcenter(
    tmp_path: Path,
    vcsim: VSphereTarget,  # noqa: F811 (the fixture)
) -> None:
    """[peer.follow]: the daemon watches the appliance VM's host in (simulated) vCenter;
    relocating the VM mid-stream moves the stream from relay B to relay C, no loss."""
    from common.link.config import FollowConfig

    pki = Pki(tmp_path)
    pw = tmp_path / "vc.pw"
    pw.write_text(vcsim.password)
    async with trio.open_nursery() as n:
        svc, fwd = await start_appliance(n, tmp_path)
        b, c = await forwarding_relays(n, pki, fwd)
        follow = FollowConfig(
            vcenter=vcsim.host,
            port=vcsim.port,
            protocol="http",
            path=vcsim.path,
            user=vcsim.user,
            password_file=pw,
            vm=VM,
            hosts={"DC0_C0_H1": peer_address(b), "DC0_C0_H0": peer_address(c)},
            identities={"DC0_C0_H1": "vic://host/esx-b", "DC0_C0_H0": "vic://host/esx-c"},
        )
        cfg = ingress_cfg(
            "esx-a",
            pki.issue("host", "esx-a"),
            peer_address(b),
            "vic://host/esx-b",
            follow={"appliance": follow},
        )
        a = await start_relay(n, cfg)
        router = a.mesh.routers["appliance"]
        vm = await stream_through(a, "vm1")
        data = pattern(4_000_000, 3)
        with trio.fail_after(60):
            for i in range(0, len(data), 200_000):
                await vm.send_all(data[i : i + 200_000])
                if i == 1_000_000:
                    await trio.to_thread.run_sync(relocate, vcsim, VM, "DC0_C0_H0")
                    await wait_until(
                        lambda: router.route.identity == "vic://host/esx-c",
                        30,
                        "the route follows the VM to esx-c",
                    )
            await wait_console_bytes(svc, "vm-1", len(data))
            await svc.consoles.writer.flush()  # type: ignore[attr-defined]
        logs = list((tmp_path / "logs").glob("*.log"))
        assert len(logs) == 1 and logs[0].read_bytes() == data
        changes = a.metrics.registry.get_sample_value(
            "relay_route_changes_total", {"route": "appliance", "cause": "vsphere"}
        )
        assert changes == 1
        n.cancel_scope.cancel()


def test_config_keys_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        loads_config('[egress.x]\nkind = "peer"\nroute = "nowhere"\n')
    assert e.value.key == "egress.x.route"
    with pytest.raises(ConfigError) as e:
        loads_config('[egress.x]\nkind = "tcp"\nhost = "h"\nport = 1\nroute = "r"\n')
    assert e.value.key == "egress.x.route"
    for n in ("c.crt", "c.key", "ca.crt"):
        (tmp_path / n).write_text("x")
    tls = (
        f'tls = {{ cert = "{tmp_path}/c.crt", key = "{tmp_path}/c.key", ca = "{tmp_path}/ca.crt" }}'
    )
    with pytest.raises(ConfigError) as e:
        loads_config(
            f'[egress.x]\nkind = "peer"\nroute = "r"\n[peer]\n{tls}\n'
            '[peer.routes.r]\naddress = "tcp:h:1"\nidentity = "vic://host/b"\n'
            '[[peer.listen]]\naddress = "tcp:0.0.0.0:1"\nallowed-peers = ["vic://host/a"]\n'
        )
    assert e.value.key == "peer.listen[0].egress"
    with pytest.raises(ConfigError) as e:
        loads_config(
            '[egress.x]\nkind = "tcp"\nhost = "h"\nport = 1\n[peer]\n'
            '[[peer.listen]]\naddress = "tcp:127.0.0.1:1"\ntls = false\nforward = "unix:/x"\n'
        )
    assert e.value.key.endswith("forward")


logging.getLogger("relay").setLevel(logging.INFO)


async def test_sigterm_drains_streams_from_peers_and_sends_goaway(tmp_path: Path) -> None:
    """terminate() on the relay that accepts the link: its peer gets GOAWAY (the link
    takes no new streams), the live stream finishes byte-exact, then the relay stops."""
    app = Appliance()
    async with trio.open_nursery() as n:
        a, b = await deliver_pair(n, tmp_path, app)
        s = await stream_through(a, "vm1")
        with trio.fail_after(30):
            assert await roundtrip(s, b"before") == b"before"
            assert a.metrics.registry.get_sample_value("relay_peer_links", {"side": "out"}) == 1
            assert b.metrics.registry.get_sample_value("relay_peer_links", {"side": "in"}) == 1
            await b.terminate()
            link = a.mesh.routers["appliance"].link
            await wait_until(lambda: link is None or link.draining, 30, "the link draining")
            data = pattern(2_000_000, 4)
            assert await roundtrip(s, data) == data  # the live stream carries on
            await s.aclose()
            await b.stopped.wait()
        assert bytes((await app.wait_streams(1))[0].data) == b"before" + data
        n.cancel_scope.cancel()


async def test_forward_into_an_appliance_vm_over_hybrid_vsock(tmp_path: Path) -> None:
    """forward = "hvsock:PATH:PORT": the relay reaches a Firecracker-style appliance VM
    through its vsock muxer (CONNECT/OK), bytes after the OK line included."""
    from tests.relay.relayfix import Muxer

    pki = Pki(tmp_path)
    async with trio.open_nursery() as n:
        svc, tcp_link = await start_appliance(n, tmp_path, "tcp:127.0.0.1:0")
        muxer = Muxer(int(tcp_link.rsplit(":", 1)[1]))
        await muxer.serve(n, tmp_path / "fc.vsock")
        b = await start_relay(
            n,
            egress_cfg(
                "esx-b",
                pki.issue("host", "esx-b"),
                1,
                ["vic://host/esx-a"],
                forward=f"hvsock:{tmp_path / 'fc.vsock'}:7444",
            ),
        )
        a = await start_relay(
            n, ingress_cfg("esx-a", pki.issue("host", "esx-a"), peer_address(b), "vic://host/esx-b")
        )
        vm = await stream_through(a, "vm2")
        data = pattern(1_000_000, 6)
        with trio.fail_after(30):
            await vm.send_all(data)
            await wait_console_bytes(svc, "vm-2", len(data))
        assert muxer.requests == [7444]
        n.cancel_scope.cancel()


async def test_route_straight_to_the_appliance_link_endpoint_over_tls(tmp_path: Path) -> None:
    """A route may name the appliance itself: its link endpoint takes TLS links from the
    relays in allowed-peers (identity vic://appliance/NAME) and refuses others."""
    from vspc.config import EndpointConfig, LinkListen, VspcConfig
    from vspc.console.config import ConsoleConfig
    from vspc.endpoint import Endpoint
    from vspc.service import VspcService

    pki = Pki(tmp_path)
    app_files = pki.issue("appliance", "vch-1")
    vcfg = VspcConfig(
        console=ConsoleConfig(log_dir=tmp_path / "logs"),
        endpoint=EndpointConfig(
            link_tls=ptls(app_files),
            link=(LinkListen("tcp:127.0.0.1:0", allowed_peers=["vic://host/esx-a"]),),
        ),
    )
    async with trio.open_nursery() as n:
        svc = VspcService(vcfg)
        await n.start(svc.run)
        ep = await n.start(Endpoint(svc).run)
        host, port = ep.links.bound[0][:2]
        a = await start_relay(
            n,
            ingress_cfg(
                "esx-a", pki.issue("host", "esx-a"), f"tcp:{host}:{port}", "vic://appliance/vch-1"
            ),
        )
        stranger = await start_relay(
            n,
            ingress_cfg(
                "esx-x", pki.issue("host", "esx-x"), f"tcp:{host}:{port}", "vic://appliance/vch-1"
            ),
        )
        vm = await stream_through(a, "vm1")
        data = pattern(500_000, 2)
        with trio.fail_after(30):
            await vm.send_all(data)
            await wait_console_bytes(svc, "vm-1", len(data))
            bad = await stream_through(stranger, "vm2")
            await bad.send_all(b"let me in")
            await wait_until(
                lambda: ep.links.links_refused > 0,
                30,  # not in allowed-peers
                "esx-x's link refused",
            )
        assert svc.consoles.find("vm-1").bytes_from_vm == len(data)
        n.cancel_scope.cancel()
