"""A fault-injecting TCP proxy for link tests: cut, stall or corrupt a real connection.

Each accepted connection is forwarded to ``target``. ``cut()`` kills every live
connection (both sockets, abortively), ``stall()`` / ``resume()`` stop and restart
forwarding, ``corrupt_next()`` flips one bit in the next chunk forwarded in the
chosen direction. ``cut_every`` cuts automatically after that many bytes have
been forwarded (client -> server), which makes repeated cuts independent of timing.
"""

from __future__ import annotations

from typing import Any

import trio

from vic.lab.cutproxy import reset


class FaultProxy:
    def __init__(self, target: tuple[str, int], *, cut_every: int = 0, max_cuts: int = 0) -> None:
        self.target = target
        self.cut_every = cut_every
        self.max_cuts = max_cuts
        self.port = 0
        self.cuts = 0
        self.connections = 0
        self.forwarded = 0
        self._since_cut = 0
        self._live: set[tuple[trio.SocketStream, trio.SocketStream]] = set()
        self._flowing = trio.Event()
        self._flowing.set()
        self._corrupt = {"up": 0, "down": 0}
        self.closed = False

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._listeners = listeners
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    @property
    def address(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def stall(self) -> None:
        self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    def corrupt_next(self, direction: str = "up") -> None:
        self._corrupt[direction] += 1

    def cut(self) -> None:
        """Abort every live connection (RST, like a dead path)."""
        self.cuts += 1
        self._since_cut = 0
        for a, b in list(self._live):
            reset(a)
            reset(b)
        self._live.clear()

    def refuse(self) -> None:
        """Stop accepting (the path is gone for good) and cut what is live."""
        self.closed = True
        self.cut()

    def reopen(self) -> None:
        """Accept connections again after ``refuse()``."""
        self.closed = False

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.closed:
            await client.aclose()
            return
        try:
            server = await trio.open_tcp_stream(*self.target)
        except OSError:
            await client.aclose()
            return
        self.connections += 1
        pair = (client, server)
        self._live.add(pair)
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._pipe, client, server, "up", n)
                n.start_soon(self._pipe, server, client, "down", n)
        finally:
            self._live.discard(pair)
            for s in pair:
                await trio.aclose_forcefully(s)

    async def _pipe(
        self, src: trio.SocketStream, dst: trio.SocketStream, direction: str, n: trio.Nursery
    ) -> None:
        try:
            while True:
                data = await src.receive_some(65536)
                if not data:
                    break
                await self._flowing.wait()
                if self._corrupt[direction]:
                    self._corrupt[direction] -= 1
                    b = bytearray(data)
                    b[len(b) // 2] ^= 0x01
                    data = bytes(b)
                await dst.send_all(data)
                if direction == "up":
                    self.forwarded += len(data)
                    self._since_cut += len(data)
                    if (
                        self.cut_every
                        and self._since_cut >= self.cut_every
                        and (not self.max_cuts or self.cuts < self.max_cuts)
                    ):
                        self.cut()
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        n.cancel_scope.cancel()
