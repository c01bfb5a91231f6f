"""deploy/systemd's units under a live systemd (PID 1 of its own PID and mount
namespace, ``tests.deploy.livesystemd``): vic-relay and vic-vspc start as the user
vic with all their hardening and become active once they say READY=1; the watchdog
is fed past several ``WatchdogSec``; ``systemctl reload`` keeps a live stream and the
process; ``systemctl stop`` drains (the unit stays deactivating while a stream is
open, and exits 0 once it ends). Skipped, with the reason, where systemd cannot run
(not root, no unshare, no systemd)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.deploy.livesystemd import BootError, Systemd, boot
from tests.relay.relayfix import Appliance, roundtrip
from tests.support.daemons import free_port
from tests.support.waiting import wait_until_async

RELAY, VSPC = "vic-relay.service", "vic-vspc.service"

RELAY_TOML = """host = "esx-test"
[egress.default]
kind = "tcp"
host = "127.0.0.1"
port = {app}
[[tcp]]
name = "vm1"
vm = "vm-1"
host = "127.0.0.1"
port = {vm}
[metrics]
enabled = false
"""
VSPC_TOML = """[listen]
host = "127.0.0.1"
port = {esx}
[console]
socket = "/run/vic/console.sock"
[metrics]
enabled = false
"""


class Live:
    def __init__(self, sd: Systemd) -> None:
        self.sd = sd

    async def ctl(self, *args: str) -> str:
        return await trio.to_thread.run_sync(functools.partial(self.sd.ctl, *args))

    async def show(self, unit: str, prop: str) -> str:
        return await trio.to_thread.run_sync(self.sd.show, unit, prop)

    async def wait_state(self, unit: str, state: str) -> None:
        async def there() -> bool:
            return await self.show(unit, "ActiveState") == state

        await wait_until_async(there, None, f"{unit} {state}")

    async def output(self, daemon: str) -> str:
        return await trio.to_thread.run_sync(self.sd.read, f"/run/vic-test/{daemon}.log")


@pytest.fixture
async def live(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[Live, Appliance, int]]:
    app = Appliance()
    await app.serve_tcp(nursery)
    vm_port = free_port()
    configs = {
        "relay": RELAY_TOML.format(app=app.port, vm=vm_port),
        "vspc": VSPC_TOML.format(esx=free_port()),
    }
    try:
        sd = await trio.to_thread.run_sync(boot, tmp_path, configs)
    except BootError as e:
        pytest.skip(f"no live systemd here: {e}")
    try:
        yield Live(sd), app, vm_port
    finally:
        await trio.to_thread.run_sync(sd.close)


async def test_units_start_reload_watchdog_and_drain(live: tuple[Live, Appliance, int]) -> None:
    lv, _app, vm_port = live
    with trio.fail_after(60):
        # Type=notify (the compat drop-in): start returns once the daemon said READY=1
        await lv.ctl("start", RELAY, VSPC)
        for unit in (RELAY, VSPC):
            assert await lv.show(unit, "ActiveState") == "active"
            assert await lv.show(unit, "SubState") == "running"
            assert await lv.show(unit, "NRestarts") == "0"
        assert "esx=127.0.0.1:" in await lv.show(VSPC, "StatusText")  # sd_notify STATUS=
        assert await lv.show(RELAY, "User") == "vic"
        pid = await lv.show(RELAY, "MainPID")

        vm = await trio.open_tcp_stream("127.0.0.1", vm_port)
        assert await roundtrip(vm, b"before reload") == b"before reload"

        # the watchdog (2 s here) is fed: pings keep coming past several intervals
        started = int(await lv.show(RELAY, "ActiveEnterTimestampMonotonic"))

        async def fed_past_three_intervals() -> bool:
            fed = int(await lv.show(RELAY, "WatchdogTimestampMonotonic"))
            return fed - started > 6_000_000

        await wait_until_async(fed_past_three_intervals, None, "watchdog fed for 6 s")
        assert await lv.show(RELAY, "MainPID") == pid

        # reload: SIGHUP, same process, the live stream carries on
        await lv.ctl("reload", RELAY)
        await lv.wait_state(RELAY, "active")
        assert await lv.show(RELAY, "MainPID") == pid
        assert await roundtrip(vm, b"after reload") == b"after reload"

        async def reloaded() -> bool:
            return "reloaded:" in await lv.output("relay")

        await wait_until_async(reloaded, None, "the relay's reload line")

        # stop: SIGTERM, the relay drains while the stream lives, exits 0 when it ends
        await lv.ctl("stop", "--no-block", RELAY)
        await lv.wait_state(RELAY, "deactivating")
        assert await roundtrip(vm, b"while draining") == b"while draining"
        await vm.aclose()
        await lv.wait_state(RELAY, "inactive")
        assert await lv.show(RELAY, "Result") == "success"
        assert await lv.show(RELAY, "ExecMainStatus") == "0"

        await lv.ctl("stop", VSPC)
        assert await lv.show(VSPC, "ActiveState") == "inactive"
        assert await lv.show(VSPC, "Result") == "success"
