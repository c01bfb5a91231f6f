"""A command on a terminal of its own, as a person runs ``vic console exec -t`` or
``vic console attach``: a pseudo-terminal that is the command's controlling terminal
(so resizing it, TIOCSWINSZ on the master, makes the kernel send the command SIGWINCH),
what the command writes read from the master, keystrokes written to it."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import termios
from collections.abc import Sequence
from pathlib import Path

import trio

from vic.lab.agent_processes import stop


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_terminal() -> None:  # in the child, after setsid(): fd 0 becomes its terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyCommand:
    def __init__(self, proc: trio.Process, master: int) -> None:
        self.proc = proc
        self.stream = trio.lowlevel.FdStream(master)
        self.out = bytearray()  # everything the command wrote to its terminal
        self._seen = 0  # ``expect`` looks after here

    @classmethod
    async def start(
        cls, argv: Sequence[str], rows: int, cols: int, *, cwd: Path, env: dict[str, str]
    ) -> PtyCommand:
        master, slave = os.openpty()
        try:
            _set_size(slave, rows, cols)
            proc = await trio.lowlevel.open_process(
                list(argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_take_terminal,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return cls(proc, master)

    async def _read(self) -> bool:
        """Read what the command wrote next into ``out``; False once its output ended."""
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""  # EIO: the command and its children closed the terminal
        self.out += data
        return bool(data)

    async def expect(self, pattern: bytes) -> re.Match[bytes]:
        """The next match of the regex ``pattern`` in the output (EOFError if it ends)."""
        rx = re.compile(pattern)
        while (m := rx.search(self.out, self._seen)) is None:
            if not await self._read():
                raise EOFError(f"output ended before {pattern!r}: {bytes(self.out[-200:])!r}")
        self._seen = m.end()
        return m

    async def type(self, keys: bytes) -> None:
        await self.stream.send_all(keys)

    def resize(self, rows: int, cols: int) -> None:
        """A new window size; the kernel sends the command SIGWINCH."""
        _set_size(self.stream.fileno(), rows, cols)

    async def wait(self) -> int:
        """Its exit code, reading whatever else it writes meanwhile."""
        while await self._read():
            pass
        return await self.proc.wait()

    async def aclose(self) -> None:
        await stop(self.proc)
        await self.stream.aclose()
