"""The file-backed extraConfig store, the file guest backend and the file watcher."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from common.io.guestinfo.filestore import POWERED_OFF, FileStore
from common.proto import guestinfo as gi
from guestagent.backends.file import FileGuestBackend
from vspc.guestinfo_watch import (
    FileStoreWatcher,
    SessionStartFailed,
    VMPoweredOff,
    go_ahead,
    send_signal,
    wait_for_exit,
    wait_for_started,
)


def test_store_update_delete_and_limits(tmp_path: Path) -> None:
    st = FileStore(tmp_path / "vm.json", max_value=64, max_total=400)
    s1 = st.update({"guestinfo.a": "1", "guestinfo.b": "2"})
    assert s1.version == 1 and dict(s1.values) == {"guestinfo.a": "1", "guestinfo.b": "2"}
    s2 = st.update({"guestinfo.a": ""})  # vSphere semantics: empty removes
    assert "guestinfo.a" not in s2.values and s2.version == 2
    with pytest.raises(gi.GuestinfoLimitError, match="64 bytes per value"):
        st.update({"guestinfo.c": "x" * 65})
    with pytest.raises(gi.GuestinfoLimitError, match="400 bytes per VM"):
        st.update({f"guestinfo.k{i}": "x" * 60 for i in range(8)})
    assert st.read().version == 2  # refused writes change nothing
    assert st.set_power(POWERED_OFF).power == POWERED_OFF


async def test_guest_backend_refuses_readonly_and_checks_before_writing(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "vm.json", max_value=1000, max_total=2000)
    be = FileGuestBackend(store)
    with pytest.raises(gi.ReadOnlyKeyError):
        await be.set("guestinfo.vice./common/id", "x")
    await be.set(gi.started_key("s"), "true")
    assert await be.get(gi.started_key("s")) == "true"
    # another writer (the appliance) fills the VM: the guest's pre-check sees it
    store.update({f"guestinfo.vice./fill{i}": "y" * 900 for i in range(2)})
    before = store.read().version
    with pytest.raises(gi.GuestinfoLimitError, match="per VM"):
        await be.set(gi.status_key("s"), "x" * 200)
    assert store.read().version == before


async def test_guest_backend_wait_changed(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "vm.json")
    be = FileGuestBackend(store)
    key = gi.goahead_key("s")
    got: dict[str, str | None] = {}

    async def waiter() -> None:
        got.update(await be.wait_changed([key], {key: None}))

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        store.update({"guestinfo.vice./unrelated": "1"})
        await trio.testing.wait_all_tasks_blocked()
        assert not got
        store.update({key: "true"})
    assert got == {key: "true"}


async def test_file_watcher_started_exit_and_errors(tmp_path: Path) -> None:
    w = FileStoreWatcher(tmp_path)
    store = w.store("vm1")
    store.update({gi.started_key("s"): gi.NIL})  # <nil> is unset

    async def guest() -> None:
        await trio.testing.wait_all_tasks_blocked()
        store.update(gi.encode_started("s", True, starttime=1))
        await trio.testing.wait_all_tasks_blocked()
        store.update(gi.encode_exit("s", 3, 2))

    async with trio.open_nursery() as n:
        n.start_soon(guest)
        with trio.fail_after(10):
            await wait_for_started(w, "vm1", "s", timeout=10)
            info = await wait_for_exit(w, "vm1", "s", timeout=10)
    assert info == gi.ExitInfo(status=3, stoptime=2, signal=None)

    store.update(gi.encode_started("t", False, "exec: /nope: No such file or directory"))
    with pytest.raises(SessionStartFailed, match="No such file"):
        await wait_for_started(w, "vm1", "t", timeout=10)


async def test_file_watcher_power_off_fails_wait(tmp_path: Path) -> None:
    w = FileStoreWatcher(tmp_path)
    store = w.store("vm2")
    store.update({"guestinfo.x": "1"})

    async def off() -> None:
        await trio.testing.wait_all_tasks_blocked()
        await w.set_power("vm2", POWERED_OFF)

    async with trio.open_nursery() as n:
        n.start_soon(off)
        with pytest.raises(VMPoweredOff):
            await wait_for_started(w, "vm2", "s", timeout=10)


async def test_file_watcher_timeout(tmp_path: Path) -> None:
    w = FileStoreWatcher(tmp_path)
    w.store("vm3").update({"guestinfo.x": "1"})
    with pytest.raises(trio.TooSlowError):
        await wait_for_started(w, "vm3", "s", timeout=0.05)


async def test_controls_roundtrip(tmp_path: Path) -> None:
    w = FileStoreWatcher(tmp_path)
    store = w.store("vm4")
    await go_ahead(w, "vm4", "s")
    assert store.read().values[gi.goahead_key("s")] == "true"

    async def guest_acks() -> None:
        be = FileGuestBackend(store)
        vals = await be.wait_changed([gi.signal_key("s")], {gi.signal_key("s"): None})
        req = gi.decode_signal_request(vals[gi.signal_key("s")])
        assert req == (1, "SIGTERM")
        await be.set(gi.signal_ack_key("s"), str(req[0]))

    async with trio.open_nursery() as n:
        n.start_soon(guest_acks)
        await trio.testing.wait_all_tasks_blocked()
        assert await send_signal(w, "vm4", "s", "SIGTERM", timeout=10) == 1


async def test_summary_for_display(tmp_path: Path) -> None:
    from vspc.guestinfo_watch import format_summary, summarize

    w = FileStoreWatcher(tmp_path)
    store = w.store("vm9")
    vals = gi.encode_sessions(
        [gi.SessionConfig(id="a", path="/x"), gi.SessionConfig(id="b", path="/y")]
    )
    vals.update(gi.encode_started("a", True))
    vals.update(gi.encode_exit("a", 137, 5, "SIGKILL"))
    vals.update(gi.encode_started("b", False, "cannot run /y: No such file or directory"))
    vals.update(gi.encode_networks({"public": [gi.decode_ip(gi.encode_ip("192.0.2.7"))]}))  # type: ignore[list-item]
    store.update(vals)
    s = summarize("vm9", await w.state("vm9"))
    assert s["sessions"]["a"] == {
        "state": "exited", "error": None, "status": 137, "signal": "SIGKILL", "stoptime": 5
    }  # fmt: skip
    line = format_summary(s)
    assert line.startswith("vm9 poweredOn public=192.0.2.7 a:exited(137 SIGKILL) b:failed(")
