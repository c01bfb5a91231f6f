"""Certificates rotated under running relays: a renewed certificate is read when its
file changes (no SIGHUP, no restart) and new handshakes see it while a live stream
carries on byte-exact; a revoked peer's live link is cut and its handshakes refused
(``relay_tls_refused_total{reason="revoked"}``); expiry as a metric."""

from __future__ import annotations

from pathlib import Path

import trio

from common.io import certs, revocation
from common.link import tls as tlsmod
from relay.daemon import RelayDaemon
from tests.relay.meshfix import appliance_side, esx_a, peer_address, stream_through
from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import Appliance, pattern, roundtrip, start_relay
from tests.support.waiting import wait_until


def sample(d: RelayDaemon, name: str, **labels: str) -> float:
    return d.metrics.registry.get_sample_value(name, labels) or 0.0


async def served_serial(b: RelayDaemon, client: tlsmod.TlsFiles) -> int | None:
    """A new peer handshake with relay ``b``: the serial of the certificate it shows."""
    host, port = b.mesh.bound()[0][:2]
    stream = await trio.open_tcp_stream(host, port)
    tls, _ = await tlsmod.handshake(
        stream, tlsmod.client_context(client), server_side=False, expected={"vic://host/esx-b"}
    )
    serial = tlsmod.peer_serial(tls)
    await trio.aclose_forcefully(tls)
    return serial


async def test_renewed_cert_is_picked_up_and_revoked_peer_cut(tmp_path: Path) -> None:
    pki, app = Pki(tmp_path), Appliance()
    async with trio.open_nursery() as n:
        b = await appliance_side(n, pki, app)
        b_cert = pki.root / "host-esx-b.crt"
        old_serial = certs.load_cert(b_cert).serial_number
        a_cfg = esx_a(pki, peer_address(b))
        a = await start_relay(n, a_cfg)
        assert a_cfg.peer is not None and a_cfg.peer.tls is not None
        a_files = a_cfg.peer.tls.files()
        vm = await stream_through(a, "vm1")
        part1, part2 = pattern(2_000_000, 3), pattern(2_000_000, 4)
        with trio.fail_after(30):
            assert await roundtrip(vm, part1) == part1
            assert await served_serial(b, a_files) == old_serial
            reloads = sample(b, "relay_reloads_total", result="ok")
            new = revocation.renew(pki.root, b_cert)  # no SIGHUP: the file changes
            await wait_until(lambda: sample(b, "relay_reloads_total", result="ok") > reloads)
            new_serial = certs.load_cert(new.cert_path).serial_number
            assert await served_serial(b, a_files) == new_serial != old_serial
            # the live link and its stream are untouched
            assert await roundtrip(vm, part2) == part2
            assert a.mesh.routers["appliance"].links_opened == 1
            expiry = sample(b, "relay_cert_not_after_timestamp_seconds", cert="peer.tls.cert")
            assert expiry == certs.load_cert(b_cert).not_valid_after_utc.timestamp()
            assert sample(b, "relay_cert_not_after_timestamp_seconds", cert="peer.tls.ca") > 0

            # revoke esx-a: b cuts its live link on the reload and refuses it from then on
            reloads = sample(b, "relay_reloads_total", result="ok")
            revocation.revoke(pki.root, certs.load_cert(a_files.cert).serial_number)
            await wait_until(lambda: sample(b, "relay_tls_refused_total", reason="revoked") >= 2)
            assert sample(b, "relay_reloads_total", result="ok") > reloads
            assert all(not r.server.links for r in b.mesh._listens.values() if r.server)
        n.cancel_scope.cancel()


async def test_revoked_server_link_is_cut_by_the_connecting_relay(tmp_path: Path) -> None:
    pki, app = Pki(tmp_path), Appliance()
    async with trio.open_nursery() as n:
        b = await appliance_side(n, pki, app)
        a = await start_relay(n, esx_a(pki, peer_address(b)))
        vm = await stream_through(a, "vm1")
        with trio.fail_after(30):
            assert await roundtrip(vm, b"before") == b"before"
            link = a.mesh.routers["appliance"].link
            assert link is not None and link.alive
            revocation.revoke(pki.root, certs.load_cert(pki.root / "host-esx-b.crt").serial_number)
            await wait_until(lambda: sample(a, "relay_tls_refused_total", reason="revoked") >= 2)
            assert not link.alive  # cut on the reload; the reconnect is refused by a itself
        n.cancel_scope.cancel()
