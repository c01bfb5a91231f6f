"""The vmware-rpctool backend against a fake vmware-rpctool on PATH (the backdoor mock)."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import sys
from pathlib import Path

import pytest
import trio

from common.proto import guestinfo as gi
from guestagent.agent import Agent
from guestagent.backends.rpctool import RpctoolBackend
from vspc.guestinfo_watch import (
    FileStoreWatcher,
    SessionStartFailed,
    configure_session,
    wait_for_exit,
    wait_for_started,
)

from .agent_helpers import agent_config

HERE = Path(__file__).resolve().parent


@pytest.fixture
def fake_rpctool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "vmware-rpctool"
    tool.write_text(
        f"#!{sys.executable} -S\nexec(open({str(HERE / 'fake_rpctool.py')!r}).read())\n"
    )
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_RPCTOOL_STORE", str(tmp_path / "vm1.json"))
    monkeypatch.setenv("FAKE_RPCTOOL_LOG", str(tmp_path / "rpctool.log"))
    return tool


async def test_get_set_and_guest_restrictions(fake_rpctool: Path, tmp_path: Path) -> None:
    be = RpctoolBackend()
    assert await be.get(gi.started_key("s")) is None
    await be.set_many({gi.started_key("s"): "true", gi.status_key("s"): "0"})
    assert await be.get(gi.started_key("s")) == "true"
    with pytest.raises(gi.ReadOnlyKeyError):
        await be.set(gi.config_key("sessions"), "x")
    with pytest.raises(gi.GuestinfoLimitError, match="per value"):
        await be.set(gi.error_key("x"), "y" * (gi.MAX_VALUE_BYTES + 1))
    log = (tmp_path / "rpctool.log").read_text()
    assert "/" not in "".join(
        line.split(" ", 1)[1] for line in log.splitlines() if line.startswith("info-set")
    )


async def test_agent_over_rpctool(fake_rpctool: Path, tmp_path: Path) -> None:
    w = FileStoreWatcher(tmp_path)
    cfg = agent_config(tmp_path, console="none")
    cfg = dataclasses.replace(
        cfg, guestinfo=dataclasses.replace(cfg.guestinfo, backend="rpctool", poll_interval=0.05)
    )
    await configure_session(
        w, "vm1", gi.SessionConfig(id="s1", path="/bin/sh", args=("sh", "-c", "exit 9"))
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            agent = Agent(cfg)
            await n.start(agent.run)
            assert (await wait_for_exit(w, "vm1", "s1", 30)).status == 9
            n.cancel_scope.cancel()


async def test_unreadable_keys_reported_in_started(
    fake_rpctool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_RPCTOOL_FAIL_GET", "|bad/")
    w = FileStoreWatcher(tmp_path)
    cfg = agent_config(tmp_path, console="none")
    cfg = dataclasses.replace(
        cfg, guestinfo=dataclasses.replace(cfg.guestinfo, backend="rpctool", poll_interval=0.05)
    )
    await configure_session(w, "vm1", gi.SessionConfig(id="bad", path="/bin/true"))
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            await n.start(Agent(cfg).run)
            with pytest.raises(SessionStartFailed) as ei:
                await wait_for_started(w, "vm1", "bad", 30)
            assert re.search(r"cannot read session config: .*Permission denied", str(ei.value))
            # the agent is still there to run the next one
            await configure_session(w, "vm1", gi.SessionConfig(id="ok", path="/bin/true"))
            assert (await wait_for_exit(w, "vm1", "ok", 30)).status == 0
            n.cancel_scope.cancel()


async def test_guestinfo_read_failures_do_not_touch_running_sessions(
    fake_rpctool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vspc.guestinfo_watch import VMState, wait_for

    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    w = FileStoreWatcher(tmp_path)
    cfg = agent_config(tmp_path, console="none")
    cfg = dataclasses.replace(
        cfg, guestinfo=dataclasses.replace(cfg.guestinfo, backend="rpctool", poll_interval=0.05)
    )
    await configure_session(
        w, "vm1", gi.SessionConfig(id="s1", path="cat", args=("cat", str(fifo)))
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            await n.start(Agent(cfg).run)
            await wait_for_started(w, "vm1", "s1", 30)
            # the backdoor starts failing reads of the session list
            monkeypatch.setenv("FAKE_RPCTOOL_FAIL_GET", "guestinfo.vice./sessions")

            def reported(st: VMState) -> str | None:
                return st.errors().get("sessions")

            text = await wait_for(w, "vm1", reported, 30)
            assert "Permission denied" in text
            os.close(os.open(fifo, os.O_WRONLY))  # the session ends normally...
            info = await wait_for_exit(w, "vm1", "s1", 30)  # ...and is still reported
            assert info.status == 0
            n.cancel_scope.cancel()
