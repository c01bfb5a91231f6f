"""``vic console attach``: the raw console session, replay then live, on this terminal.

On a terminal, stdin goes to raw mode and the escape key (Ctrl-] by default)
detaches; with plain stdin/stdout it copies bytes.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from typing import Any

import trio

from common.proto.console import protocol as proto
from vspc.console.client import ConsoleClientError, Endpoint, attach


def run_attach(ep: Endpoint, req: proto.AttachRequest, *, follow: bool, escape: int | None) -> int:
    in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    tty = os.isatty(in_fd)
    saved: Any = None
    if tty and follow:
        import termios
        import tty as ttymod

        saved = termios.tcgetattr(in_fd)
        ttymod.setraw(in_fd)
    try:
        return trio.run(
            attach_session, ep, req, in_fd, out_fd, follow, escape if tty else None, tty
        )
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    mv = memoryview(data)
    while mv:
        n = os.write(fd, mv)
        mv = mv[n:]


def _read_input(fd: int, stop: threading.Event) -> bytes | None:
    """Blocking read of stdin that notices ``stop`` (polls so a detach leaves no reader behind)."""
    while not stop.is_set():
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            return os.read(fd, 64 * 1024)
    return None


async def attach_session(
    ep: Endpoint,
    req: proto.AttachRequest,
    in_fd: int,
    out_fd: int,
    follow: bool,
    escape: int | None,
    tty: bool,
) -> int:
    """Copy the console to ``out_fd`` and ``in_fd`` to the console; the exit status."""
    try:
        stream, status, first = await attach(ep, req)
    except ConsoleClientError as e:
        print(f"vic console: {e}", file=sys.stderr)
        return 1
    nl = "\r\n" if tty else "\n"
    if tty:
        _announce(status, escape, nl)
    session = _Session(stream, req, in_fd, out_fd, follow, escape, nl)
    session.replay_left = int(status.get("replay", 0))
    return await session.run(first)


def _announce(status: dict[str, Any], escape: int | None, nl: str) -> None:
    key = f"^{chr(escape ^ 0x40)}" if escape is not None else "nothing"
    sys.stderr.write(
        f"[vic console: attached to {status.get('display')} "
        f"({status.get('uuid')}:{status.get('label')}),"
        f" {status.get('mode')}; {key} detaches]{nl}"
    )
    sys.stderr.flush()


class _Session:
    """One attached session: the console to ``out_fd`` and (when following) ``in_fd`` to it."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        req: proto.AttachRequest,
        in_fd: int,
        out_fd: int,
        follow: bool,
        escape: int | None,
        nl: str,
    ) -> None:
        self.stream = stream
        self.req = req
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.follow = follow
        self.escape = escape
        self.nl = nl
        self.replay_left = 0  # without follow: replay bytes still to show
        self.result = 0
        self.stop = threading.Event()

    async def run(self, first: bytes) -> int:
        nl = self.nl
        try:
            async with self.stream:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.output, first, nursery.cancel_scope)
                    if self.follow:
                        nursery.start_soon(self.input, nursery.cancel_scope)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            sys.stderr.write(f"{nl}[vic console: connection lost: {e}]{nl}")
            self.result = 1
        finally:
            self.stop.set()
            sys.stderr.flush()
        return self.result

    async def output(self, first: bytes, cancel: trio.CancelScope) -> None:
        data: bytes | bytearray = first
        while True:
            if data:
                if not self.follow:
                    data = data[: self.replay_left]
                    self.replay_left -= len(data)
                await trio.to_thread.run_sync(_write_all, self.out_fd, bytes(data))
            if not self.follow and self.replay_left <= 0:
                break
            data = await self._receive()
            if not data:
                if self.follow:
                    nl = self.nl
                    sys.stderr.write(
                        f"{nl}[vic console: session closed by the console service]{nl}"
                    )
                    self.result = 1
                break
        cancel.cancel()

    async def _receive(self) -> bytes | bytearray:
        try:
            return await self.stream.receive_some(64 * 1024)
        except trio.BrokenResourceError:
            return b""

    async def input(self, cancel: trio.CancelScope) -> None:
        while True:
            data = await trio.to_thread.run_sync(
                _read_input, self.in_fd, self.stop, abandon_on_cancel=True
            )
            if not data:  # stopped, or stdin EOF: stop sending, keep showing output
                return
            if await self._send(data):
                cancel.cancel()
                return

    async def _send(self, data: bytes) -> bool:
        """Send typed ``data`` (unless read-only); True when it held the escape key,
        in which case only what came before it is sent."""
        i = data.find(bytes([self.escape])) if self.escape is not None else -1
        if i >= 0:
            if i and self.req.mode != "ro":
                await self.stream.send_all(data[:i])
            sys.stderr.write(f"{self.nl}[vic console: detached]{self.nl}")
            return True
        if self.req.mode != "ro":
            await self.stream.send_all(data)
        return False
