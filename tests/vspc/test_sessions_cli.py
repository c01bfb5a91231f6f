"""`vic console exec` and `vic console logs` as real processes against a real `vic vspc`,
a tether end (real processes) reaching it as a relayed stream labelled ``session``
through the appliance endpoint; and the ``[sessions]`` table's config errors."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import termios
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from common.proto.guestinfo import keys as gik
from common.proto.link.header import OriginHeader, encode_header
from tests.support.vic_cli import REPO, VIC, run_vic
from tests.vspc.sessions_tether import Tether
from tests.vspc.test_vspc_ops import VspcDaemon, daemon, toml_config
from vspc.guestinfo_watch import FileStoreWatcher

VM = "vm-cli"
MAIN = ["sh", "-c", "echo one; echo two; echo three; exec sleep 1000"]


def _config(tmp: Path) -> str:
    return toml_config(tmp) + (
        f'[endpoint]\nunix = "{tmp / "endpoint.sock"}"\n'
        f'[sessions]\nlogs-dir = "{tmp / "clogs"}"\nguestinfo-dir = "{tmp / "gi"}"\n'
    )


def _vic() -> list[str]:
    import sys

    return [str(VIC)] if VIC.exists() else [sys.executable, "-m", "vic.cli"]


@asynccontextmanager
async def tethered(
    tmp: Path, main: list[str] = MAIN, *, main_tty: bool = False
) -> AsyncIterator[tuple[VspcDaemon, Tether]]:
    """The daemon, and a tether whose session came in through its endpoint."""
    (tmp / "gi").mkdir()
    async with daemon(tmp, _config(tmp)) as d, trio.open_nursery() as nursery:
        await d.ready()
        gi = FileStoreWatcher(tmp / "gi")

        def secrets() -> tuple[bytes, ...]:
            raw = gi.store(VM).read().values.get(gik.session_secrets_key())
            return gik.decode_session_secrets(raw)

        tether = Tether(secrets, main, main_tty=main_tty)
        await nursery.start(tether.run)
        stream = await trio.open_unix_socket(str(tmp / "endpoint.sock"))
        header = OriginHeader(host="esx1", vm=VM, kind="pipe", label="session")
        await stream.send_all(encode_header(header))
        async with gi.watch(VM) as w:  # the appliance writes the secret on this stream
            with trio.fail_after(10):
                while gik.session_secrets_key() not in (await w.next()).values:
                    pass
        nursery.start_soon(lambda: tether.ep.run_connection(stream, handshake_timeout=10))
        yield d, tether
        nursery.cancel_scope.cancel()


async def console(tmp: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    cmd = [*_vic(), "console", args[0], "--socket", str(tmp / "console.sock"), *args[1:]]
    with trio.fail_after(30):
        return await trio.run_process(
            cmd, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False, cwd=REPO
        )


async def _follow_until(tmp: Path, want: bytes) -> bytes:
    """`vic console logs -f` until its stdout holds ``want``; then it is stopped."""
    cmd = [*_vic(), "console", "logs", "--socket", str(tmp / "console.sock"), "-f", VM]
    seen = b""
    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            while want not in seen:
                data = await proc.stdout.receive_some(4096)
                assert data, f"logs -f ended early: {seen!r}"
                seen += data
        finally:
            proc.terminate()
            await proc.wait()
    return seen


@pytest.mark.trio
async def test_exec_and_logs_through_a_real_vspc(tmp_path: Path) -> None:
    async with tethered(tmp_path):
        assert await _follow_until(tmp_path, b"three\n") == b"one\ntwo\nthree\n"
        r = await console(tmp_path, "logs", VM, "--tail", "2")
        assert (r.returncode, r.stdout) == (0, b"two\nthree\n"), r
        r = await console(tmp_path, "logs", VM, "-t", "--tail", "1")
        assert r.returncode == 0 and r.stdout.endswith(b"Z three\n"), r
        r = await console(tmp_path, "logs", VM, "--since", str(time.time() + 3600))
        assert (r.returncode, r.stdout) == (0, b""), r

        script = "echo out; echo err >&2; exit 5"
        r = await console(tmp_path, "exec", VM, "--", "sh", "-c", script)
        assert (r.returncode, r.stdout, r.stderr) == (5, b"out\n", b"err\n"), r
        r = await console(tmp_path, "exec", VM, "-i", "--", "cat", stdin=b"abc\x00def")
        assert (r.returncode, r.stdout) == (0, b"abc\x00def"), r
        r = await console(tmp_path, "exec", VM, "--", "sh", "-c", "kill -KILL $$")
        assert r.returncode == 128 + 9, r
        r = await console(tmp_path, "exec", VM, "--", "/no/such/program")
        assert r.returncode == 126 and b"no/such/program" in r.stderr, r
        r = await console(tmp_path, "exec", "vm-unknown", "--", "true")
        assert r.returncode == 1 and b"no session" in r.stderr, r


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("replay-limit = 1", "sessions.replay-limit"),
        ("enabled = 3", "sessions.enabled"),
        ("handshake-timeout = -1", "sessions.handshake-timeout"),
        ("secret-bytes = 8", "sessions.secret-bytes"),
    ],
)
def test_bad_sessions_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, key: str
) -> None:
    from vic.cli import main

    path = tmp_path / "vspc.toml"
    path.write_text(toml_config(tmp_path) + f"[sessions]\n{line}\n")
    assert main(["vspc", "--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"config error: {key}:" in err[0], err


def test_bad_sessions_config_process(tmp_path: Path) -> None:
    path = tmp_path / "vspc.toml"
    (tmp_path / "a-file").write_text("")
    bad = tmp_path / "a-file" / "logs"
    path.write_text(toml_config(tmp_path) + f'[sessions]\nlogs-dir = "{bad}"\n')
    r = run_vic("vspc", path)
    assert r.returncode == 2 and "sessions.logs-dir" in r.stderr, r


def _winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def _read_until(master: int, want: bytes, seen: bytearray) -> None:
    while want not in seen:
        await trio.lowlevel.wait_readable(master)
        seen += os.read(master, 4096)


@pytest.mark.trio
async def test_exec_tty_takes_the_terminal_size_and_sigwinch(tmp_path: Path) -> None:
    async with tethered(tmp_path) as (_, tether):
        master, slave = pty.openpty()
        _winsize(slave, 31, 97)
        cmd = [*_vic(), "console", "exec", "--socket", str(tmp_path / "console.sock"), VM]
        cmd += ["-it", "--", "sh", "-c", "stty size; read x; stty size; exit 6"]
        os.set_blocking(master, False)
        proc = await trio.lowlevel.open_process(cmd, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        seen = bytearray()
        try:
            with trio.fail_after(30):
                await _read_until(master, b"31 97", seen)
                _winsize(master, 40, 120)
                proc.send_signal(signal.SIGWINCH)
                while (40, 120) not in tether.resized:
                    await tether.resize_seen.wait()
                    tether.resize_seen = trio.Event()
                os.write(master, b"x\r")  # raw here; the remote pty turns it into a line
                await _read_until(master, b"40 120", seen)
                assert await proc.wait() == 6
        finally:
            os.close(master)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
