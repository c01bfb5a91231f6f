"""Certificate rotation as an operator does it: two real `vic relay` processes, then
`vic certs renew` and `vic certs revoke` from the command line, with no SIGHUP: the
relay that holds the certificate reloads by itself (RELOADING=1/READY=1 over
sd_notify), new handshakes get the new certificate while the live stream carries
on byte-exact, and a revoked peer's link is closed and its handshakes refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from common.io import certs
from common.link import tls as tlsmod
from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import Appliance, pattern, roundtrip
from tests.relay.test_mesh_ops import ROOT, egress_toml, ingress_toml
from tests.support.daemons import Daemons, free_port


def vic_certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vic.cli", "certs", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


async def served_serial(port: int, client: tlsmod.TlsFiles) -> int | None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    tls, _ = await tlsmod.handshake(
        stream, tlsmod.client_context(client), server_side=False, expected={"vic://host/esx-b"}
    )
    serial = tlsmod.peer_serial(tls)
    await trio.aclose_forcefully(tls)
    return serial


async def test_renew_and_revoke_from_the_cli_under_running_relays(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    app = Appliance()
    vm_port, l1 = free_port(), free_port()
    a_files, b_files = pki.issue("host", "esx-a"), pki.issue("host", "esx-b")
    async with trio.open_nursery() as n, Daemons(tmp_path) as ds:
        app_port = await app.serve_tcp(n)
        b = ds.add("relay", "esx-b", egress_toml(b_files, app_port, (l1,)))
        a = ds.add("relay", "esx-a", ingress_toml(a_files, vm_port, l1, tmp_path / "a.sock"))
        await b.start()
        await a.start()
        vm = await trio.open_tcp_stream("127.0.0.1", vm_port)
        data = pattern(2_000_000, 6)
        half = len(data) // 2
        with trio.fail_after(60):
            assert await roundtrip(vm, data[:half]) == data[:half]
            old = certs.load_cert(b_files.cert).serial_number
            assert await served_serial(l1, a_files) == old

            r = await trio.to_thread.run_sync(
                vic_certs, "renew", str(b_files.cert), "--dir", str(pki.root)
            )
            assert r.returncode == 0, r.stderr
            await b.expect_state("RELOADING=1")
            await b.expect_state("READY=1")
            new = certs.load_cert(b_files.cert).serial_number
            assert f"serial {new:x}" in r.stdout
            assert await served_serial(l1, a_files) == new != old
            assert await roundtrip(vm, data[half:]) == data[half:]  # same link, every byte

            r = await trio.to_thread.run_sync(
                vic_certs, "revoke", str(a_files.cert), "--dir", str(pki.root)
            )
            assert r.returncode == 0, r.stderr
            await b.wait_log("closing the link of vic://host/esx-a: its certificate")
            await b.wait_log("refused peer link from")
            assert "(revoked)" in b.log_text()
        await vm.aclose()
        for d in (a, b):  # the stream cannot resume without esx-a's certificate: no drain
            d.kill()
            await d.wait_exit()
        n.cancel_scope.cancel()
