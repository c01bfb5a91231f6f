"""The client side of SESSION-ATTACH (``vic console attach`` for a tethered VM).

``run_attach`` asks the appliance for the VM's main process; when it has no
session for the VM (not tethered, sessions off, an older appliance) it returns
None and the caller takes the raw console instead. Otherwise stdout and stderr
go apart to fd 1 and 2, stdin (unless read-only) to the process, each SIGWINCH
as a resize; on a terminal stdin is raw and the ``escape`` byte detaches (exit
0, the process runs on). When the main process ends, its exit code is ours (a
signal is ``128 + signo``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import trio

from common.proto.console import protocol as proto
from vspc.console.client import ConsoleClientError, Endpoint
from vspc.sessions import client as base


class _Attach(base._Exec):
    def __init__(
        self, stream: trio.abc.Stream, escape: int | None, nl: str, read_only: bool
    ) -> None:
        super().__init__(stream)
        self.read_only = read_only  # input is only watched for the escape key
        self.escape = escape
        self.nl = nl
        self.detached = trio.Event()

    async def stdin(self) -> None:
        while True:
            data = await trio.to_thread.run_sync(base._read, self.stop, abandon_on_cancel=True)
            if not data:
                if not self.read_only:
                    await self.send(proto.encode_frame(proto.FrameType.STDIN_EOF))
                return
            i = data.find(bytes([self.escape])) if self.escape is not None else -1
            if i >= 0:
                data = data[:i]
            if self.read_only:
                data = b""
            for at in range(0, len(data), proto.MAX_FRAME):
                chunk = data[at : at + proto.MAX_FRAME]
                await self.send(proto.encode_frame(proto.FrameType.STDIN, chunk))
            if i >= 0:
                sys.stderr.write(f"{self.nl}[vic console: detached]{self.nl}")
                self.detached.set()
                return


def _size() -> tuple[int, int]:
    if not os.isatty(0):
        return 0, 0
    cols, rows = os.get_terminal_size(0)
    return rows, cols


async def _attach(ep: Endpoint, vm: str, read_only: bool, escape: int | None) -> int | None:
    rows, cols = _size()
    req = proto.SessionAttachRequest(vm, stdin=not read_only, rows=rows, cols=cols)
    try:
        stream, rest = await base._open(ep, req)
    except ConsoleClientError:
        return None  # no session for it here: the raw console
    tty = os.isatty(0)
    saved: Any = None
    if tty:
        import termios
        import tty as ttymod

        saved = termios.tcgetattr(0)
        ttymod.setraw(0)
    try:
        return await _run(stream, rest, read_only, escape if tty else None, tty)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, saved)


async def _run(
    stream: trio.abc.Stream, rest: bytes, read_only: bool, escape: int | None, tty: bool
) -> int:
    nl = "\r\n" if tty else "\n"
    if tty:
        key = f"^{chr(escape ^ 0x40)}" if escape is not None else "nothing"
        sys.stderr.write(f"[vic console: attached to the main process; {key} detaches]{nl}")
        sys.stderr.flush()
    at = _Attach(stream, escape, nl, read_only)
    code = 0
    try:
        async with stream, trio.open_nursery() as nursery:
            if not read_only or escape is not None:
                nursery.start_soon(at.stdin)
            if tty:
                nursery.start_soon(at.winch)

            async def output() -> None:
                nonlocal code
                code = await at.output(rest)
                nursery.cancel_scope.cancel()

            nursery.start_soon(output)
            await at.detached.wait()
            nursery.cancel_scope.cancel()
    finally:
        at.stop.set()
        sys.stderr.flush()
    return code


def run_attach(ep: Endpoint, vm: str, *, read_only: bool, escape: int | None) -> int | None:
    """See the module doc: the exit code, or None for "take the raw console"."""
    return trio.run(_attach, ep, vm, read_only, escape)
