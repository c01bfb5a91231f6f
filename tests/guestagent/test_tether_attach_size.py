"""The main process's pty takes the size an OPEN_ATTACH carries before its first byte
is relayed: an attach opened before the process starts (the go-ahead) gives the pty
its size before the process runs, so its first ``stty size`` shows it; an appliance
whose peer lacks CAP_ATTACH_SIZE sends the size as a RESIZE, with the same result.
An attach to a running process resizes its pty (SIGWINCH) before relaying."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import trio

from common.io.sealedsession import SessionEndpoint
from common.proto import guestinfo as gi
from common.proto.session import channels as chs
from common.proto.session.messages import CAP_EXIT_TIMED_OUT, CAPS, ExitStatus, Stream
from common.proto.session.session import Session, SessionConfig
from guestagent.config import SessionSection
from tests.guestagent.agent_helpers import agent_config, start_agent
from tests.guestagent.tether_helpers import Appliance, ExecResult, write_secrets
from vspc.guestinfo_watch import FileStoreWatcher, configure_session, go_ahead

T = 30  # safety net only
SECRET = b"z" * 32


async def _start(
    nursery: trio.Nursery, tmp_path: Path, script: str, caps: int
) -> tuple[Appliance, FileStoreWatcher]:
    """An agent whose main process has a tty and waits for the go-ahead; an appliance
    offering ``caps``."""
    appliance = Appliance(str(tmp_path / "session.sock"), SECRET)
    appliance.endpoint = SessionEndpoint(
        chs.Role.APPLIANCE,
        Session(chs.Role.APPLIANCE, os.urandom(16), SessionConfig(caps=caps)),
        lambda: [SECRET],
        name="appliance",
    )
    await nursery.start(appliance.serve)
    watcher = FileStoreWatcher(tmp_path)
    main = gi.SessionConfig(
        id="c1", path="/bin/sh", args=("sh", "-c", script), openstdin=True, runblock=True, tty=True
    )
    await configure_session(watcher, "vm1", main)
    cfg = agent_config(tmp_path, console="none")
    cfg = dataclasses.replace(
        cfg, session=SessionSection(enabled=True, transport="unix", path=appliance.path)
    )
    write_secrets(cfg.guestinfo.path, SECRET)
    await start_agent(nursery, cfg)
    return appliance, watcher


@pytest.mark.parametrize("caps", [CAPS, CAP_EXIT_TIMED_OUT], ids=["capable", "older-peer"])
async def test_the_first_stty_size_shows_the_size_of_the_open_attach(
    nursery: trio.Nursery, tmp_path: Path, caps: int
) -> None:
    appliance, watcher = await _start(nursery, tmp_path, "stty size; exit 0", caps)
    ep = appliance.endpoint
    ch = ep.open_attach(True, 33, 77)
    r = appliance.results[ch] = ExecResult()
    with trio.fail_after(T):
        await r.opened.wait()
        await ep.wait_live()
        assert ep.session.peer_caps == caps
        await go_ahead(watcher, "vm1", "c1")
        await r.done.wait()
    assert r.text(Stream.TTY).strip() == b"33 77"
    assert r.status == ExitStatus(code=0)


async def test_an_attach_to_a_running_process_sizes_its_pty_first(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The process runs before anyone attaches; the attach's size reaches its pty
    (SIGWINCH: the trap prints the new size) before the attach's input does."""
    script = "stty -echo; trap 'stty size' WINCH; echo up; read x; read x; exit 0"
    appliance, watcher = await _start(nursery, tmp_path, script, CAPS)
    ep = appliance.endpoint
    first = ep.open_attach(True)
    r = appliance.results[first] = ExecResult()
    with trio.fail_after(T):
        await r.opened.wait()
        await go_ahead(watcher, "vm1", "c1")
        await r.wait_for(Stream.TTY, b"up")
        ch = ep.open_attach(True, 41, 99)
        r2 = appliance.results[ch] = ExecResult()
        await r2.opened.wait()
        assert await ep.send_all(ch, Stream.STDIN, b"a\n")  # after the size, in order
        await r2.wait_for(Stream.TTY, b"41 99")
        assert await ep.send_all(ch, Stream.STDIN, b"b\n")
        await r2.done.wait()
    assert r2.status == ExitStatus(code=0)
