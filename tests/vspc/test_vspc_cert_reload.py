"""The vSPC follows its certificate files: a renewed ESX-listener certificate is used
by the next handshake without SIGHUP or restart, and the expiry gauge moves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import trio

from common.io import certs, revocation, tlsctx
from common.io.tlsconfig import ServerTls
from common.link.tls import peer_serial
from tests.support.waiting import wait_until
from vspc.service import VspcService

from .conftest import make_config, metric

GAUGE = "vspc_cert_not_after_timestamp_seconds"


async def served_serial(port: int, ca: Path) -> int | None:
    ctx = tlsctx.client_context(ca=ca)
    tls = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname="vch.local"
    )
    await tls.do_handshake()
    serial = peer_serial(tls)
    await trio.aclose_forcefully(tls)
    return serial


async def test_renewed_listener_cert_is_used_without_restart(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    ca_dir = tmp_path / "ca"
    certs.init_ca(ca_dir)
    leaf = certs.issue(ca_dir, "appliance", "vch", dns_names=("vch.local",))
    base = make_config(tmp_path)
    config = replace(
        base, listen=replace(base.listen, tls=ServerTls(leaf.cert_path, leaf.key_path))
    )
    service: VspcService = await nursery.start(VspcService(config).run)
    ca = ca_dir / certs.CA_CERT
    assert service.esx_port is not None
    with trio.fail_after(20):
        old = await served_serial(service.esx_port, ca)
        assert old == certs.load_cert(leaf.cert_path).serial_number
        assert metric(service, GAUGE, cert="listen.tls.cert") == leaf.not_after.timestamp()
        new = revocation.renew(ca_dir, leaf.cert_path, days=30)  # the file changes, no SIGHUP
        await wait_until(
            lambda: metric(service, GAUGE, cert="listen.tls.cert") == new.not_after.timestamp()
        )
        assert (
            await served_serial(service.esx_port, ca)
            == certs.load_cert(new.cert_path).serial_number
        )
