"""Listening Unix sockets, with one policy for whatever is already at the path.

Every program listens on Unix sockets (the relay's ingress and admin socket,
the appliance's endpoint and console socket, peer links). They all open them
here, so a leftover file is treated the same everywhere:

* nothing there: fine;
* a socket nobody answers on (its process died): stale, removed and replaced;
* a socket somebody answers on: refused (``EADDRINUSE``), left alone;
* anything else (a regular file, a directory, a socket we may not probe):
  refused, never deleted.

The socket appears at its path with its final mode: it is bound under a
temporary name in the same directory, chmod-ed, then hard-linked to the path
(which fails rather than replace something that appeared meanwhile). On close
the path is removed only if it is still ours (same device and inode), so a
listener that replaced ours keeps its socket.

Refusals are OSErrors with an errno: open inside ``common.io.listen.listening``
and the operator gets one line naming the config key. Note ``getsockname()``
on these sockets gives the temporary name: use ``UnixListener.path``.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import stat
from pathlib import Path

import trio

from common.ops import inherit

# sun_path holds 108 bytes including the terminating NUL
MAX_PATH_BYTES = 107


class UnixListener(trio.abc.Listener[trio.SocketStream]):
    """A listening Unix socket at ``path``; ``aclose``/``close`` remove the path if ours."""

    def __init__(self, sock: trio.socket.SocketType, path: Path, ident: tuple[int, int]) -> None:
        self.socket = sock
        self.path = path
        self._ident = ident
        self._listener = trio.SocketListener(sock)
        inherit.register(f"unix {path}", sock)

    async def accept(self) -> trio.SocketStream:
        return await self._listener.accept()

    def close(self) -> None:
        """Close the socket and remove the path unless someone else's socket is there now."""
        inherit.unregister(f"unix {self.path}", self.socket)
        self.socket.close()
        if inherit.handed_on():  # the next process serves this path now
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


async def open_unix_listener(
    path: str | os.PathLike[str], *, mode: int | None = 0o660, backlog: int = socket.SOMAXCONN
) -> UnixListener:
    """Listen on ``path`` (mode ``mode``; None: as the umask gives), after clearing a
    stale socket there; an OSError says why not (see the module docstring)."""
    where = Path(path)
    handed = inherit.inherit(f"unix {where}")
    if handed is not None:  # the previous process listened here: take its socket over
        st = os.lstat(where)
        return UnixListener(trio.socket.from_stdlib_socket(handed), where, (st.st_dev, st.st_ino))
    if len(os.fsencode(where)) > MAX_PATH_BYTES:
        raise OSError(errno.ENAMETOOLONG, f"socket path too long (over {MAX_PATH_BYTES} bytes)")
    clear_stale(where)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await _bind_in_place(sock, where, mode)
        sock.listen(backlog)
        st = os.lstat(where)
    except BaseException:
        sock.close()
        raise
    return UnixListener(sock, where, (st.st_dev, st.st_ino))


def clear_stale(path: Path) -> None:
    """Remove ``path`` if it is a socket nobody answers on; refuse anything else there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a socket (left as it is)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(os.fspath(path))
    except (BlockingIOError, InterruptedError):
        pass  # a full backlog: alive
    except ConnectionRefusedError:
        _unlink_same(path, st)  # nobody listens: stale
        return
    except FileNotFoundError:
        return  # gone meanwhile
    except OSError as e:
        raise OSError(
            e.errno, f"a socket is there that cannot be probed ({e.strerror}); left as it is"
        ) from None
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "a live socket is there, in use by another process")


def _unlink_same(path: Path, seen: os.stat_result) -> None:
    """Unlink ``path`` if it is still the file ``seen`` was taken of."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (seen.st_dev, seen.st_ino):
            os.unlink(path)
    except FileNotFoundError:
        pass


async def _bind_in_place(sock: trio.socket.SocketType, path: Path, mode: int | None) -> None:
    """Bind ``sock`` to a temporary name beside ``path``, set ``mode``, link it to ``path``."""
    tmp = path.with_name(f".~{secrets.token_hex(4)}")
    await sock.bind(os.fspath(tmp))
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise OSError(
                errno.EADDRINUSE, "something appeared there while binding (left as it is)"
            ) from None
    finally:
        os.unlink(tmp)
