"""The one Unix listener: what it does with a leftover file, its mode, its removal.

Real sockets in a short directory under /tmp (socket paths are limited to 107 bytes).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from common.io.listen import listening
from common.io.unixlisten import open_unix_listener
from common.ops.config import ConfigError


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ul", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def stale_socket(path: Path) -> None:
    """A socket file whose listener is gone (as a killed process leaves it)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


async def roundtrip(path: Path, lst: trio.abc.Listener[trio.SocketStream]) -> bytes:
    """Send two bytes through ``lst``; connections that end without data (a probe
    by a listener that was refused) are skipped."""
    with trio.fail_after(5):
        client = await trio.open_unix_socket(str(path))
        await client.send_all(b"hi")
        data = b""
        while not data:
            server = await lst.accept()
            data = await server.receive_some(2)
            await server.aclose()
        await client.aclose()
    return bytes(data)


async def test_stale_socket_is_replaced(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    stale_socket(path)
    with pytest.raises(ConnectionRefusedError):
        await trio.open_unix_socket(str(path))
    lst = await open_unix_listener(path)
    assert await roundtrip(path, lst) == b"hi"
    await lst.aclose()


async def test_live_socket_is_refused_and_kept(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    first = await open_unix_listener(path)
    with pytest.raises(ConfigError, match="in use") as ei:
        with listening("thing.socket", where=str(path)):
            await open_unix_listener(path)
    assert ei.value.key == "thing.socket"
    assert await roundtrip(path, first) == b"hi"  # the first one still serves
    await first.aclose()


async def test_live_socket_with_full_backlog_is_refused(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(str(path))
    busy.listen(0)
    fillers = []
    try:
        for _ in range(8):  # fill the backlog: a blocking connect would now hang
            f = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            f.setblocking(False)
            fillers.append(f)
            try:
                f.connect(str(path))
            except BlockingIOError:
                break
        with pytest.raises(OSError, match="in use"):
            await open_unix_listener(path)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        for f in fillers:
            f.close()
        busy.close()


@pytest.mark.parametrize("kind", ["file", "directory"])
async def test_non_socket_is_refused_and_intact(short_dir: Path, kind: str) -> None:
    path = short_dir / "s.sock"
    if kind == "file":
        path.write_text("precious")
    else:
        path.mkdir()
        (path / "inside").write_text("precious")
    with pytest.raises(ConfigError, match="not a socket") as ei:
        with listening("thing.socket", where=str(path)):
            await open_unix_listener(path)
    assert ei.value.key == "thing.socket"
    kept = path if kind == "file" else path / "inside"
    assert kept.read_text() == "precious"
    assert os.listdir(short_dir) == ["s.sock"]  # no temporary left


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
async def test_mode_is_final_when_the_path_appears(short_dir: Path, mode: int) -> None:
    # a umask that would give another mode: the socket must never be seen with it
    old = os.umask(0o002 if mode != 0o666 else 0o077)
    try:
        lst = await open_unix_listener(short_dir / "s.sock", mode=mode)
    finally:
        os.umask(old)
    st = os.lstat(short_dir / "s.sock")
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == mode
    assert os.listdir(short_dir) == ["s.sock"]
    await lst.aclose()


async def test_mode_is_set_before_the_link(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What appears at the path is the inode already chmod-ed: watch every link."""
    seen: list[int] = []
    real_link = os.link

    def link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(stat.S_IMODE(os.lstat(src).st_mode))
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    lst = await open_unix_listener(short_dir / "s.sock", mode=0o600)
    assert seen == [0o600]
    await lst.aclose()


async def test_removed_on_close(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    lst = await open_unix_listener(path)
    await lst.aclose()
    assert not path.exists() and not path.is_symlink()


async def test_not_removed_when_replaced_by_someone_else(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    lst = await open_unix_listener(path)
    os.unlink(path)
    other = await open_unix_listener(path)  # a restarted listener took the path
    await lst.aclose()
    assert await roundtrip(path, other) == b"hi"
    await other.aclose()
    assert not path.exists()


async def test_path_too_long_names_the_key(short_dir: Path) -> None:
    path = short_dir / ("x" * 120)
    with pytest.raises(ConfigError, match="too long") as ei:
        with listening("thing.socket", where=str(path)):
            await open_unix_listener(path)
    assert ei.value.key == "thing.socket"
