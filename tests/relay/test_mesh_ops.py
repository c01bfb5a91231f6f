"""The mesh as an operator runs it: two real `vic relay` processes from TOML files,
a TLS peer link between them, SIGHUP re-routing, `vic relay route show|set` on the
admin socket, SIGTERM; the appliance gets every byte once and in order."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import trio

from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import Appliance, pattern, roundtrip
from tests.support.daemons import Daemons, free_port

ROOT = Path(__file__).resolve().parents[2]


def tls_line(files: object) -> str:
    return (
        f'tls = {{ cert = "{files.cert}", key = "{files.key}", '  # type: ignore[attr-defined]
        f'ca = "{files.ca}" }}'  # type: ignore[attr-defined]
    )


def ingress_toml(files: object, vm_port: int, route_port: int, admin: Path) -> str:
    return f"""host = "esx-a"
[egress.default]
kind = "peer"
route = "appliance"
[metrics]
enabled = false
[timeouts]
drain = 20.0
[[tcp]]
name = "vm1"
vm = "vm1"
port = {vm_port}
[peer]
admin-socket = "{admin}"
{tls_line(files)}
[peer.routes.appliance]
address = "tcp:127.0.0.1:{route_port}"
identity = "vic://host/esx-b"
"""


def egress_toml(files: object, app_port: int, ports: tuple[int, ...]) -> str:
    listen = "".join(
        f'[[peer.listen]]\naddress = "tcp:127.0.0.1:{p}"\nallowed-peers = ["vic://host/esx-a"]\n'
        for p in ports
    )
    return f"""host = "esx-b"
[egress.default]
kind = "tcp"
host = "127.0.0.1"
port = {app_port}
[metrics]
enabled = false
[peer]
{tls_line(files)}
{listen}"""


def vic_route(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vic.cli", "relay", "route", *args],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
    )


async def test_two_relay_processes_reload_route_set_and_drain(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    app = Appliance()
    vm_port, l1, l2 = free_port(), free_port(), free_port()
    admin = tmp_path / "a.sock"
    a_files, b_files = pki.issue("host", "esx-a"), pki.issue("host", "esx-b")
    async with trio.open_nursery() as n, Daemons(tmp_path) as ds:
        app_port = await app.serve_tcp(n)
        b = ds.add("relay", "esx-b", egress_toml(b_files, app_port, (l1, l2)))
        a = ds.add("relay", "esx-a", ingress_toml(a_files, vm_port, l1, admin))
        await b.start()
        await a.start()
        vm = await trio.open_tcp_stream("127.0.0.1", vm_port)
        data = pattern(3_000_000, 8)
        third = len(data) // 3
        assert await roundtrip(vm, data[:third]) == data[:third]
        show = await trio.to_thread.run_sync(
            vic_route, "show", "--json", "--admin-socket", str(admin)
        )
        assert show.returncode == 0, show.stderr
        routes = json.loads(show.stdout)["routes"]
        assert routes["appliance"]["address"] == f"tcp:127.0.0.1:{l1}"
        assert routes["appliance"]["link"]["peer"] == "vic://host/esx-b"

        # SIGHUP with the route through esx-b's other listener: the stream resumes there
        a.config_path.write_text(ingress_toml(a_files, vm_port, l2, admin))
        a.kill(signal.SIGHUP)
        await a.expect_state("RELOADING=1")
        await a.expect_state("READY=1")
        assert await roundtrip(vm, data[third : 2 * third]) == data[third : 2 * third]

        moved = await trio.to_thread.run_sync(
            vic_route,
            "set",
            "--admin-socket",
            str(admin),
            "--address",
            f"tcp:127.0.0.1:{l1}",
            "--identity",
            "vic://host/esx-b",
        )
        assert moved.returncode == 0, moved.stdout + moved.stderr
        show = await trio.to_thread.run_sync(
            vic_route, "show", "--json", "--admin-socket", str(admin)
        )
        assert json.loads(show.stdout)["routes"]["appliance"]["route_changes"] == 2

        a.kill(signal.SIGTERM)
        await a.expect_state("STOPPING=1")
        assert await roundtrip(vm, data[2 * third :]) == data[2 * third :]  # draining
        await vm.aclose()
        assert await a.wait_exit() == 0
        rec = (await app.wait_streams(1))[0]
        with trio.fail_after(30):
            await rec.closed.wait()
        assert rec.header.host == "esx-a" and bytes(rec.data) == data
        assert await b.stop() == 0
        n.cancel_scope.cancel()
