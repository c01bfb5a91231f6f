"""Route state as an operator meets it, on real `vic relay` processes: `route set` is an
override (shown as such, beside the file's route, kept across a restart), SIGHUP
restores the file's route, `--persist` writes the file, `reset` drops the override;
an unreachable route is one WARNING per outage and a metric."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from relay.admin import admin_request
from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import Appliance, pattern, roundtrip
from tests.relay.test_mesh_ops import egress_toml, ingress_toml
from tests.support.daemons import Daemon, Daemons, free_port
from tests.support.waiting import wait_until_async

ESX_B = "vic://host/esx-b"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


async def show(admin: Path) -> dict[str, Any]:
    reply = await admin_request(admin, {"cmd": "route.show"})
    assert reply["ok"], reply
    route: dict[str, Any] = reply["routes"]["appliance"]
    return route


async def set_route(admin: Path, port: int, **extra: Any) -> dict[str, Any]:
    req = {"cmd": "route.set", "address": f"tcp:127.0.0.1:{port}", "identity": ESX_B, **extra}
    reply = await admin_request(admin, req)
    assert reply["ok"], reply
    return reply


async def reload(d: Daemon) -> None:
    d.kill(signal.SIGHUP)
    await d.expect_state("RELOADING=1")
    await d.expect_state("READY=1")


async def test_override_shown_kept_over_restart_and_dropped_by_sighup(
    tmp_path: Path, pki: Pki
) -> None:
    app = Appliance()
    vm_port, l1, l2 = free_port(), free_port(), free_port()
    admin = tmp_path / "a.sock"
    a_files, b_files = pki.issue("host", "esx-a"), pki.issue("host", "esx-b")
    data = pattern(600_000, 3)
    with trio.fail_after(120):
        async with trio.open_nursery() as n, Daemons(tmp_path) as ds:
            app_port = await app.serve_tcp(n)
            b = ds.add("relay", "esx-b", egress_toml(b_files, app_port, (l1, l2)))
            a = ds.add("relay", "esx-a", ingress_toml(a_files, vm_port, l1, admin))
            await b.start()
            await a.start()
            vm = await trio.open_tcp_stream("127.0.0.1", vm_port)
            assert await roundtrip(vm, data[:200_000]) == data[:200_000]
            first = await show(admin)
            assert first["source"] == "file" and first["up"] is True

            reply = await set_route(admin, l2)
            assert reply["source"] == "override" and reply["streams_moved"] == 1
            shown = await show(admin)
            assert shown["source"] == "override", shown
            assert shown["address"] == f"tcp:127.0.0.1:{l2}"
            assert shown["file"]["address"] == f"tcp:127.0.0.1:{l1}"
            assert await roundtrip(vm, data[200_000:400_000]) == data[200_000:400_000]

            # a restart keeps the override (the state file), and says so in its log
            await vm.aclose()
            assert await a.stop() == 0
            await a.start()
            assert "override in force" in a.log()
            assert (await show(admin))["source"] == "override"

            # SIGHUP of the unchanged file: the file's route again, the override dropped
            await reload(a)
            shown = await show(admin)
            assert shown["source"] == "file" and shown["address"] == f"tcp:127.0.0.1:{l1}"
            assert "reload restores the file's route" in a.log()
            vm = await trio.open_tcp_stream("127.0.0.1", vm_port)
            assert await roundtrip(vm, data[400_000:]) == data[400_000:]
            await vm.aclose()
            assert await a.stop() == 0
            assert await b.stop() == 0
            n.cancel_scope.cancel()
    got = b"".join(bytes(r.data) for r in app.streams)
    assert got == data


async def test_persist_writes_the_file_and_reset_goes_back(tmp_path: Path, pki: Pki) -> None:
    vm_port, l1, l2 = free_port(), free_port(), free_port()
    admin = tmp_path / "a.sock"
    a_files = pki.issue("host", "esx-a")
    with trio.fail_after(60):
        async with Daemons(tmp_path) as ds:
            a = ds.add("relay", "esx-a", ingress_toml(a_files, vm_port, l1, admin))
            await a.start()
            before = a.config_path.read_text()
            await set_route(admin, l2)
            assert a.config_path.read_text() == before  # an override leaves the file alone
            reply = await admin_request(admin, {"cmd": "route.reset"})
            assert reply["ok"] and reply["address"] == f"tcp:127.0.0.1:{l1}", reply
            assert (await show(admin))["source"] == "file"

            reply = await set_route(admin, l2, persist=True)
            assert reply["source"] == "file", reply
            text = a.config_path.read_text()
            assert f'address = "tcp:127.0.0.1:{l2}"' in text
            assert text.replace(str(l2), str(l1)) == before  # nothing else changed
            await reload(a)  # the file now says l2: a reload keeps it
            shown = await show(admin)
            assert shown["source"] == "file" and shown["address"] == f"tcp:127.0.0.1:{l2}"
            assert await a.stop() == 0


def metrics_on(toml: str, port: int) -> str:
    return toml.replace(
        "[metrics]\nenabled = false", f'[metrics]\nhost = "127.0.0.1"\nport = {port}'
    )


async def test_unreachable_route_is_one_warning_and_a_metric(tmp_path: Path, pki: Pki) -> None:
    app = Appliance()
    vm_port, l1, mport = free_port(), free_port(), free_port()
    admin = tmp_path / "a.sock"
    a_files, b_files = pki.issue("host", "esx-a"), pki.issue("host", "esx-b")
    data = pattern(100_000, 5)
    with trio.fail_after(90):
        async with trio.open_nursery() as n, Daemons(tmp_path) as ds:
            app_port = await app.serve_tcp(n)
            a = ds.add(
                "relay", "esx-a", metrics_on(ingress_toml(a_files, vm_port, l1, admin), mport)
            )
            b = ds.add("relay", "esx-b", egress_toml(b_files, app_port, (l1,)))
            a.metrics_address = ("127.0.0.1", mport)
            await a.start()
            vm1 = await trio.open_tcp_stream("127.0.0.1", vm_port)
            vm2 = await trio.open_tcp_stream("127.0.0.1", vm_port)
            await vm1.send_all(data)
            await vm2.send_all(data)

            async def failed_often() -> bool:
                return await a.metric("relay_route_connect_failures_total", route="appliance") >= 6

            await wait_until_async(failed_often, timeout=30, what="repeated connect failures")
            assert await a.metric("relay_route_up", route="appliance") == 0
            assert a.log().count("cannot reach") == 1, a.log()
            assert "no path" not in a.log()  # no line per stream per retry

            await b.start()  # the route comes back: both streams go through
            for vm in (vm1, vm2):
                got = bytearray()
                while len(got) < len(data):
                    got += await vm.receive_some(65536)
                assert bytes(got) == data
            assert await a.metric("relay_route_up", route="appliance") == 1
            assert a.log().count("reachable again") == 1
            await vm1.aclose()
            await vm2.aclose()
            n.cancel_scope.cancel()
