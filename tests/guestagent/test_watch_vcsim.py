"""The appliance watcher and the guest's simulated channel against govmomi's vCenter simulator."""

from __future__ import annotations

import pytest
import trio

from common.proto import guestinfo as gi
from guestagent.backends.vsphere import VSphereGuestBackend
from vspc.guestinfo_vsphere import VSphereWatcher
from vspc.guestinfo_watch import (
    SessionStartFailed,
    VMPoweredOff,
    configure_session,
    wait_for_exit,
    wait_for_started,
)

VM = "DC0_H0_VM0"


async def test_vcsim_roundtrip(vcsim_url: str) -> None:
    watcher = VSphereWatcher(vcsim_url)
    guest = VSphereGuestBackend(vcsim_url, VM)
    try:
        cfg = gi.SessionConfig(id="c1", path="/bin/echo", args=("echo", "a|b", ""))
        await configure_session(watcher, VM, cfg)
        # the guest reads its session config through the API
        values = await guest.get_many(gi.session_keys("c1"))
        assert gi.decode_session("c1", values) == cfg
        with pytest.raises(gi.ReadOnlyKeyError):
            await guest.set(gi.config_key("common", "id"), "x")

        async def guest_runs() -> None:
            await guest.set_many(gi.encode_started("c1", True, starttime=10))
            await guest.set_many(gi.encode_exit("c1", 7, 11))

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                n.start_soon(guest_runs)
                await wait_for_started(watcher, VM, "c1", timeout=30)
                info = await wait_for_exit(watcher, VM, "c1", timeout=30)
        assert info.status == 7 and info.stoptime == 11

        await guest.set_many(gi.encode_started("c2", False, "exec: /x: not found"))
        with pytest.raises(SessionStartFailed, match="not found"):
            await wait_for_started(watcher, VM, "c2", timeout=30)
    finally:
        await guest.aclose()
        await watcher.aclose()


async def test_vcsim_power_off_while_waiting(vcsim_url: str) -> None:
    watcher = VSphereWatcher(vcsim_url)
    vm = "DC0_H0_VM1"
    try:

        async def power_off() -> None:
            await watcher.set_power(vm, "poweredOff")

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                n.start_soon(power_off)
                with pytest.raises(VMPoweredOff):
                    await wait_for_started(watcher, vm, "never", timeout=30)
    finally:
        await watcher.set_power(vm, "poweredOn")
        await watcher.aclose()


async def test_vcsim_guest_limit_checked_before_writing(vcsim_url: str) -> None:
    guest = VSphereGuestBackend(vcsim_url, VM, ledger=gi.SizeLedger(max_value=1024))
    try:
        with pytest.raises(gi.GuestinfoLimitError, match="1024 bytes per value"):
            await guest.set(gi.error_key("big"), "x" * 2000)
        assert await guest.get(gi.error_key("big")) is None
    finally:
        await guest.aclose()
