"""The main process's pty takes the attaching terminal's size before anything typed:
`vic console attach` on a real pty against a real `vic vspc` (the container's
``stty size`` shows it), and a session the appliance renews (the tether lost it)
reopens the main attach with the size its client last gave, in the OPEN_ATTACH."""

from __future__ import annotations

import os
import pty
from pathlib import Path

import pytest
import trio

from common.proto.session.channels import Role
from common.proto.session.session import Session
from tests.vspc.sessions_util import VM as RIG_VM
from tests.vspc.sessions_util import Rig, rig
from tests.vspc.test_sessions_cli import VM, _read_until, _vic, _winsize, tethered
from vspc.sessions.channel import MainState, VmSession

T = 30  # safety net only


async def test_attach_on_a_terminal_sizes_the_main_pty_before_input(tmp_path: Path) -> None:
    main = ["sh", "-c", "stty -echo; read x; stty size; exec sleep 1000"]
    async with tethered(tmp_path, main, main_tty=True):
        master, slave = pty.openpty()
        _winsize(slave, 29, 101)
        os.set_blocking(master, False)
        cmd = [*_vic(), "console", "attach", "--socket", str(tmp_path / "console.sock"), VM]
        proc = await trio.lowlevel.open_process(cmd, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        seen = bytearray()
        try:
            with trio.fail_after(T):
                await _read_until(master, b"detaches]", seen)
                os.write(master, b"x\r")  # raw here; the remote pty makes it a line
                await _read_until(master, b"29 101", seen)
                os.write(master, b"\x1d")  # ^]: detach, the process runs on
                await _read_until(master, b"detached", seen)
                assert await proc.wait() == 0
        finally:
            os.close(master)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.mark.trio
async def test_a_renewed_session_opens_the_main_attach_with_the_last_size(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, main=["sh", "-c", "exec sleep 1000"]) as r:
        await r.connect()
        s = r.service.find(RIG_VM)
        assert s is not None
        with trio.fail_after(T):
            await s.wait_main(MainState.RUNNING)
            sizes = trio.open_memory_channel[tuple[int, int]](1)
            async with trio.open_nursery() as n:
                n.start_soon(lambda: r.api.attach(RIG_VM, size=(60, 200), resize=sizes[1]))
                while (60, 200) not in r.tether.resized:
                    await r.tether.resize_seen.wait()
                    r.tether.resize_seen = trio.Event()
                await sizes[0].send((61, 201))  # a later resize: the last one counts
                while (61, 201) not in r.tether.resized:
                    await r.tether.resize_seen.wait()
                    r.tether.resize_seen = trio.Event()
                n.cancel_scope.cancel()
            assert [(a.rows, a.cols) for a in r.tether.attached] == [(0, 0)]
            r.tether.ep.replace_session(Session(Role.TETHER))  # as after a tether restart
            renewed = await _renew(r, s)
            await renewed.wait_main(MainState.RUNNING)
        assert [(a.rows, a.cols) for a in r.tether.attached] == [(0, 0), (61, 201)]


async def _renew(r: Rig, old: VmSession) -> VmSession:
    """Connections until the appliance carries a new session: the tether's
    SESSION_MISMATCH on the first renews it, this connection or the next carries it."""
    for _attempt in range(2):
        await r.connect()
        async with trio.open_nursery() as n:
            n.start_soon(_cancel_when, r.ended, n.cancel_scope)
            while (s := r.service.find(RIG_VM)) is old or s is None or not s.connected:
                await (s or old).changed.wait()
            n.cancel_scope.cancel()
            return s
    raise AssertionError("the appliance never renewed the session")


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
