"""A CA replaced under running relays (the new CA written over the old one's file,
the certificates re-issued by it): once the relay sees the files change (no SIGHUP),
a peer whose certificate only the old CA signed is refused
(``relay_tls_refused_total{reason="unknown_ca"}``) and one the new CA signed is
taken, while the link made before and its stream carry on byte-exact. (The peer
link rebuilds its contexts on every reload; the forward listener's and every
other long-lived context follow through ``common.io.tlsrefresh``.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trio

from common.io import certs
from common.link import tls as tlsmod
from relay.daemon import RelayDaemon
from tests.relay.meshfix import appliance_side, esx_a, peer_address, stream_through
from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import Appliance, pattern, roundtrip, start_relay
from tests.support.waiting import wait_until


def sample(d: RelayDaemon, name: str, **labels: str) -> float:
    return d.metrics.registry.get_sample_value(name, labels) or 0.0


async def peer_handshake(b: RelayDaemon, client: tlsmod.TlsFiles) -> int | None:
    """A new peer link handshake with relay ``b`` as ``client``: the serial b shows,
    None if either side refused (TLS 1.3: the client learns on its first read)."""
    host, port = b.mesh.bound()[0][:2]
    stream = await trio.open_tcp_stream(host, port)
    try:
        tls, _ = await tlsmod.handshake(
            stream, tlsmod.client_context(client), server_side=False, expected={"vic://host/esx-b"}
        )
    except trio.BrokenResourceError:
        return None
    serial = tlsmod.peer_serial(tls)
    with trio.move_on_after(2):  # b's refusal alert, if it refuses
        try:
            await tls.receive_some(1)
        except trio.BrokenResourceError:
            serial = None
    await trio.aclose_forcefully(tls)
    return serial


def rotate(pki: Pki, new: Pki, name: str) -> None:
    """Operator's rotation on one host: its pair re-issued by ``new``, then the CA file
    replaced; each file renamed into place."""
    files = new.issue("host", name)
    for src, dst in ((files.key, f"host-{name}.key"), (files.cert, f"host-{name}.crt")):
        tmp = pki.root / (dst + ".tmp")
        shutil.copy(src, tmp)
        os.replace(tmp, pki.root / dst)
    tmp = pki.root / "ca.tmp"
    shutil.copy(new.root / certs.CA_CERT, tmp)
    os.replace(tmp, pki.root / certs.CA_CERT)


@pytest.mark.parametrize("how", ["file-change", "sighup"])
async def test_replaced_ca_refuses_old_peers_and_keeps_live_links(tmp_path: Path, how: str) -> None:
    pki, app = Pki(tmp_path / "pki"), Appliance()
    new = Pki(tmp_path / "new-ca")
    async with trio.open_nursery() as n:
        b = await appliance_side(n, pki, app)
        a_cfg = esx_a(pki, peer_address(b))
        a = await start_relay(n, a_cfg)
        assert a_cfg.peer is not None and a_cfg.peer.tls is not None
        old_a = tlsmod.TlsFiles(*(tmp_path / f"old-esx-a.{x}" for x in ("crt", "key", "ca")))
        for src, dst in zip(a_cfg.peer.tls.files().paths()[:2], old_a.paths()[:2], strict=True):
            shutil.copy(src, dst)  # esx-a's pair from the old CA, kept aside
        # trusting both CAs, so that it is b that refuses it, not it b
        old_a.ca.write_bytes(b"".join((p.root / certs.CA_CERT).read_bytes() for p in (pki, new)))
        new_a = new.issue("host", "esx-a")
        vm = await stream_through(a, "vm1")
        part1, part2 = pattern(1_000_000, 5), pattern(1_000_000, 6)
        with trio.fail_after(30):
            assert await roundtrip(vm, part1) == part1
            assert await peer_handshake(b, old_a) is not None
            assert await peer_handshake(b, new_a) is None  # not yet trusted
            reloads = sample(b, "relay_reloads_total", result="ok")
            refused = sample(b, "relay_tls_refused_total", reason="unknown_ca")
            rotate(pki, new, "esx-b")
            if how == "sighup":
                await b.reload(b.config)
            await wait_until(lambda: sample(b, "relay_reloads_total", result="ok") > reloads)
            new_b = certs.load_cert(pki.root / "host-esx-b.crt").serial_number
            ca_expiry = certs.load_cert(new.root / certs.CA_CERT).not_valid_after_utc.timestamp()
            gauge = "relay_cert_not_after_timestamp_seconds"
            await wait_until(lambda: sample(b, gauge, cert="peer.tls.ca") == ca_expiry)
            assert await peer_handshake(b, new_a) == new_b
            assert await peer_handshake(b, old_a) is None
            assert sample(b, "relay_tls_refused_total", reason="unknown_ca") > refused
            # the link made under the old CA and its stream carry on
            assert await roundtrip(vm, part2) == part2
            assert a.mesh.routers["appliance"].links_opened == 1
        n.cancel_scope.cancel()
