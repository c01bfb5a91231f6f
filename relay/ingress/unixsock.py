"""Listening Unix sockets for ingress: stale-socket cleanup and removal on stop."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import trio

BACKLOG = 4096


async def bind_unix(path: Path, mode: int = 0o660) -> tuple[trio.socket.SocketType, int]:
    """Bind and listen on ``path``; a stale socket file left there is replaced,
    anything else (a regular file, a directory) is an error. Returns the socket
    and the inode of the path, for ``unlink_if_ours``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket")
        os.unlink(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        os.chmod(path, mode)
        sock.listen(BACKLOG)
        ino = os.stat(path).st_ino
    except BaseException:
        sock.close()
        raise
    return sock, ino


def unlink_if_ours(path: Path, ino: int) -> None:
    """Remove ``path`` unless someone (a restarted listener) has replaced it since."""
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    except OSError:
        pass
