"""Console over a serial line: a pty pair stands in for the VM's serial port and its host end."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
from pathlib import Path

import trio

from common.proto import guestinfo as gi
from guestagent.agent import Agent
from vspc.guestinfo_watch import FileStoreWatcher, VMState, configure_session, wait_for

from .agent_helpers import agent_config, start_agent


def outq(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0])


async def read_line(
    host: trio.lowlevel.FdStream, got: bytearray, want: int, all_read: trio.Event
) -> None:
    """Read the line's host end into ``got`` until it closes; ``all_read`` once
    ``want`` bytes are in."""
    while True:
        try:
            chunk = await host.receive_some(65536)
        except trio.BrokenResourceError:
            return
        if not chunk:
            return
        got.extend(chunk)
        if len(got) >= want:
            all_read.set()


async def test_serial_console_over_pty_pair(tmp_path: Path) -> None:
    size = 1024 * 1024
    master, slave = pty.openpty()
    slave_path = os.ttyname(slave)
    host = trio.lowlevel.FdStream(os.dup(master))
    got = bytearray()
    w = FileStoreWatcher(tmp_path)
    cfg = gi.SessionConfig(
        id="s1",
        path="/bin/sh",
        args=("sh", "-c", f"printf 'a\\nb\\377\\0\\r\\n'; head -c {size} /dev/zero; exit 4"),
        runblock=True,
    )
    await configure_session(w, "vm1", cfg)
    expected = b"a\nb\xff\x00\r\n" + b"\0" * size
    seen: list[tuple[int, int]] = []
    all_read = trio.Event()
    agent: Agent | None = None

    def status(st: VMState) -> int | None:
        e = st.session("s1").exit
        if e is None:
            return None
        # at this instant the agent has written everything to the line and the line
        # has drained (a pty may still be moving the last bytes to the master's side)
        assert agent is not None and agent.console is not None
        seen.append((agent.console.sent_total, outq(slave)))
        return e.status

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                agent = await start_agent(
                    n, agent_config(tmp_path, console="serial", console_path=slave_path)
                )
                await agent.console.wait_connected()  # type: ignore[union-attr]
                # pyserial configured the line raw: 8 bits, no echo, no CR/LF mapping
                attrs = termios.tcgetattr(slave)
                assert not attrs[3] & termios.ECHO and not attrs[1] & termios.OPOST
                n.start_soon(read_line, host, got, len(expected), all_read)
                await w.write("vm1", {gi.goahead_key("s1"): "true"})
                code = await wait_for(w, "vm1", status, 30)
                await all_read.wait()
                n.cancel_scope.cancel()
        assert code == 4
        assert seen == [(len(expected), 0)]
        assert bytes(got) == expected
    finally:
        await host.aclose()
        os.close(master)
        os.close(slave)
