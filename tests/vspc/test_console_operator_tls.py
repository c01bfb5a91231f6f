"""The console's TCP endpoint with certificates from our own CA (``vic certs``):
operators in, relays' and appliances' certificates and revoked operators out, a
renewed server certificate used by new handshakes while an attach carries on."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio
import trio.testing

from common.io import certs, revocation, tlsctx, tlsrefresh
from common.link.tls import peer_serial
from common.proto.console.protocol import AttachRequest
from vic.cli import main
from vspc.console import ConsoleTcpConfig
from vspc.console.client import ConsoleClientError, Endpoint, attach, list_consoles
from vspc.console.service import ConsoleService

from .test_console_support import KEY, make_config, pattern, read_exactly, short_dir, start

__all__ = ["short_dir"]


def refused(svc: ConsoleService, reason: str) -> float:
    got = svc.metrics.registry.get_sample_value(
        "vspc_tls_refused_total", {"listener": "console", "reason": reason}
    )
    return got or 0.0


class Ca:
    def __init__(self, root: Path) -> None:
        self.root = root
        certs.init_ca(root)
        self.server = certs.issue(root, "appliance", "vch", dns_names=("vch.local",))

    def endpoint(self, svc: ConsoleService, who: str | None) -> Endpoint:
        host, port = svc.tcp_addresses[0]
        c = None
        if who is not None:
            kind, name = who.split("/")
            c = certs.issue(self.root, kind, name, force=True)
        return Endpoint(
            host=host,
            port=port,
            cert=c.cert_path if c else None,
            key=c.key_path if c else None,
            ca=self.root / certs.CA_CERT,
            server_name="vch.local",
        )

    async def server_serial(self, svc: ConsoleService) -> int | None:
        host, port = svc.tcp_addresses[0]
        op = self.root / "operator-probe.crt"
        if not op.exists():
            certs.issue(self.root, "operator", "probe")
        ctx = tlsctx.client_context(
            ca=self.root / certs.CA_CERT, cert=op, key=op.with_suffix(".key")
        )
        tls = trio.SSLStream(
            await trio.open_tcp_stream(host, port), ctx, server_hostname="vch.local"
        )
        await tls.do_handshake()
        serial = peer_serial(tls)
        await trio.aclose_forcefully(tls)
        return serial


async def serve(nursery: trio.Nursery, d: Path, ca: Ca) -> ConsoleService:
    tcp = ConsoleTcpConfig(
        cert=ca.server.cert_path,
        key=ca.server.key_path,
        client_ca=ca.root / certs.CA_CERT,
        port=0,
    )
    svc = await start(nursery, make_config(d, socket=None, tcp=tcp))
    svc.open(KEY, "tls-vm")
    return svc


async def test_operator_attaches_host_cert_and_no_cert_refused(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    ca = Ca(short_dir / "ca")
    svc = await serve(nursery, short_dir, ca)
    with trio.fail_after(10):
        assert len(await list_consoles(ca.endpoint(svc, "operator/alice"))) == 1
        for who, reason in (("host/esx-1", "not_operator"), (None, "no_certificate")):
            with pytest.raises(ConsoleClientError):
                await list_consoles(ca.endpoint(svc, who))
            assert refused(svc, reason) == 1


async def test_renewed_server_cert_and_revoked_operator(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    ca = Ca(short_dir / "ca")
    svc = await serve(nursery, short_dir, ca)
    con = svc._consoles[KEY]
    alice = ca.endpoint(svc, "operator/alice")
    with trio.fail_after(20):
        stream, _status, rest = await attach(alice, AttachRequest("tls-vm"))
        buf = bytearray(rest)
        one, two = pattern(0, 3000), pattern(3000, 3000)
        await con.from_vm(one)
        assert await read_exactly(stream, buf, len(one)) == one
        old = await ca.server_serial(svc)
        new = revocation.renew(ca.root, ca.server.cert_path)
        assert tlsrefresh.refresh() >= 1  # what SIGHUP / the file watcher run
        assert await ca.server_serial(svc) == certs.load_cert(new.cert_path).serial_number != old
        await con.from_vm(two)  # the live attach is untouched
        assert await read_exactly(stream, buf, len(two)) == two
        # revoke alice: her attach is cut, her next handshake fails; bob's works
        assert alice.cert is not None
        revocation.revoke(ca.root, certs.load_cert(alice.cert).serial_number)
        tlsrefresh.refresh()
        with pytest.raises(ConsoleClientError):
            await list_consoles(alice)
        assert refused(svc, "revoked") == 2  # her live attach cut, then her handshake
        assert len(await list_consoles(ca.endpoint(svc, "operator/bob"))) == 1
        await stream.aclose()


async def test_revoked_operators_live_attach_is_cut(
    short_dir: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    ca = Ca(short_dir / "ca")
    svc = await serve(nursery, short_dir, ca)
    con = svc._consoles[KEY]
    alice, bob = ca.endpoint(svc, "operator/alice"), ca.endpoint(svc, "operator/bob")
    with trio.fail_after(20):
        a_stream, _s, _a_rest = await attach(alice, AttachRequest("tls-vm", replay=0))
        b_stream, _s, b_rest = await attach(bob, AttachRequest("tls-vm", replay=0))
        await trio.testing.wait_all_tasks_blocked()
        assert alice.cert is not None
        assert main(["certs", "revoke", "--dir", str(ca.root), str(alice.cert)]) == 0
        tlsrefresh.refresh()  # what SIGHUP / the CRL file watcher run
        with contextlib.suppress(trio.BrokenResourceError):  # alice's attach ends
            while await a_stream.receive_some(4096):
                pass
        assert refused(svc, "revoked") == 1
        assert "is revoked" in caplog.text
        one = pattern(0, 2000)
        await con.from_vm(one)  # bob's attach carries on
        buf = bytearray(b_rest)
        assert await read_exactly(b_stream, buf, len(one)) == one
        await b_stream.aclose()
