"""`vic console attach` to a tethered VM's main process, as real processes against a
real `vic vspc` and a tether (real processes): stdout and stderr apart, typed input,
the exit code, the detach key leaving the process running, resize passed through,
and `vic console rotate`; the raw console for a VM with no session."""

from __future__ import annotations

import os
import pty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from common.proto.guestinfo import keys as gik
from common.proto.link.header import OriginHeader, encode_header
from tests.vspc.sessions_tether import Tether
from tests.vspc.test_sessions_cli import _config, _read_until, _vic, _winsize, console
from tests.vspc.test_vspc_ops import VspcDaemon, daemon
from vspc.guestinfo_watch import FileStoreWatcher

VM = "vm-cli"  # the name test_sessions_cli's helpers use
MAIN = [
    "sh",
    "-c",
    'while read l; do [ "$l" = quit ] && exit 7; echo "o:$l"; echo "e:$l" >&2; done',
]


class _Tether(Tether):
    """The test tether, resize on a main process without a pty recorded, not applied."""

    def _resize(self, ch: int) -> None:
        rows, cols = self.sizes[ch]
        self.resized.append((rows, cols))
        self.resize_seen.set()


class _Rig:
    def __init__(self, tmp: Path, d: VspcDaemon, nursery: trio.Nursery) -> None:
        self.tmp, self.d, self.nursery = tmp, d, nursery
        self.gi = FileStoreWatcher(tmp / "gi")
        self.tether = _Tether(self.secrets, MAIN)
        self.ended = trio.Event()

    def secrets(self) -> tuple[bytes, ...]:
        raw = self.gi.store(VM).read().values.get(gik.session_secrets_key())
        return gik.decode_session_secrets(raw)

    async def connect(self, first: bool) -> trio.SocketStream:
        """A relayed stream labelled ``session`` into the daemon, carried by the tether."""
        stream = await trio.open_unix_socket(str(self.tmp / "endpoint.sock"))
        header = OriginHeader(host="esx1", vm=VM, kind="pipe", label="session")
        await stream.send_all(encode_header(header))
        if first:
            async with self.gi.watch(VM) as w:  # the appliance writes the secret
                with trio.fail_after(10):
                    while gik.session_secrets_key() not in (await w.next()).values:
                        pass
        self.ended = ended = trio.Event()

        async def carry() -> None:
            await self.tether.ep.run_connection(stream, handshake_timeout=10)
            ended.set()

        self.nursery.start_soon(carry)
        return stream


@asynccontextmanager
async def tethered(tmp: Path) -> AsyncIterator[_Rig]:
    (tmp / "gi").mkdir()
    async with daemon(tmp, _config(tmp)) as d, trio.open_nursery() as nursery:
        await d.ready()
        rig = _Rig(tmp, d, nursery)
        await nursery.start(rig.tether.run)
        await rig.connect(first=True)
        yield rig
        nursery.cancel_scope.cancel()


def _cmd(tmp: Path, *args: str) -> list[str]:
    return [*_vic(), "console", args[0], "--socket", str(tmp / "console.sock"), *args[1:]]


async def _kill(proc: Any) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def _pty_attach(rig: _Rig, *flags: str, typed: bytes, echo: tuple[bytes, ...]) -> None:
    """`vic console attach` on a terminal (33x101): type ``typed``, see each of
    ``echo``, then ^] detaches with exit 0."""
    master, slave = pty.openpty()
    _winsize(slave, 33, 101)
    os.set_blocking(master, False)
    proc = await trio.lowlevel.open_process(
        _cmd(rig.tmp, "attach", VM, *flags), stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    seen = bytearray()
    try:
        with trio.fail_after(30):
            await _read_until(master, b"detaches]", seen)
            while (33, 101) not in rig.tether.resized:  # the size reached the tether
                await rig.tether.resize_seen.wait()
                rig.tether.resize_seen = trio.Event()
            os.write(master, typed)  # raw: the bytes as typed
            for want in echo:
                await _read_until(master, want, seen)
            os.write(master, b"\x1d")  # ^]: detach
            await _read_until(master, b"detached", seen)
            assert await proc.wait() == 0
    finally:
        os.close(master)
        await _kill(proc)


@pytest.mark.trio
async def test_attach_detach_then_attach_to_the_exit(tmp_path: Path) -> None:
    async with tethered(tmp_path) as rig:
        await _pty_attach(rig, typed=b"abc\n", echo=(b"o:abc", b"e:abc"))
        await _pty_attach(rig, "--mode", "ro", typed=b"zzz\n", echo=())  # not sent

        # still running: a second attach types to it, sees stdout and stderr apart
        r = await console(tmp_path, "attach", VM, stdin=b"one\nquit\n")
        assert (r.returncode, r.stdout, r.stderr) == (7, b"o:one\n", b"e:one\n"), r
        # once it ended, an attach returns its exit code at once
        r = await console(tmp_path, "attach", VM, stdin=b"")
        assert (r.returncode, r.stdout) == (7, b""), r
        r = await console(tmp_path, "logs", VM)  # what it read: abc and one, not zzz
        assert r.stdout == b"o:abc\no:one\n", r


@pytest.mark.trio
async def test_attach_without_a_session_takes_the_raw_console(tmp_path: Path) -> None:
    async with tethered(tmp_path):
        r = await console(tmp_path, "attach", "vm-unknown", stdin=b"")
        assert r.returncode == 1 and b"no console matches" in r.stderr.lower(), r


@pytest.mark.trio
async def test_rotate_then_a_new_connection_uses_index_0(tmp_path: Path) -> None:
    async with tethered(tmp_path) as rig:
        r = await console(tmp_path, "exec", VM, "--", "true")
        assert r.returncode == 0, r
        before = rig.secrets()
        r = await console(tmp_path, "rotate", VM)
        assert r.returncode == 0 and b"rotated" in r.stderr, r
        after = rig.secrets()
        assert len(after) == 2 and after[1] == before[0] and after[0] != before[0]
        r = await console(tmp_path, "rotate", "vm-unknown")
        assert r.returncode == 1 and b"no session" in r.stderr, r
        await rig.connect(first=False)  # a new connection replaces the old one
        with trio.fail_after(10):
            while rig.tether.ep.stats.established < 2 or not rig.tether.ep.live:
                await rig.tether.ep.wait_changed()
        r = await console(tmp_path, "exec", VM, "--", "sh", "-c", "exit 3")
        assert r.returncode == 3, r
        est = rig.tether.ep.last_established
        assert est is not None and est.secret_index == 0
        assert rig.tether.ep.stats.established == 2
