"""A TCP proxy the lab can cut: every live connection through it is closed at once
(both sides reset), as when a network path between two hosts fails."""

from __future__ import annotations

import socket
import struct
from typing import Any

import trio


def reset(stream: trio.SocketStream) -> None:
    """Close with an RST (SO_LINGER 0), not an orderly FIN: a path that died."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    stream.socket.close()


class CutProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.cuts = 0
        self._live: set[trio.SocketStream] = set()

    @property
    def address(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    def cut(self) -> None:
        """Reset every connection now (SO_LINGER 0: an RST, not an orderly close)."""
        self.cuts += 1
        for s in list(self._live):
            reset(s)
        self._live.clear()

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            server = await trio.open_tcp_stream(*self.target)
        except OSError:
            await trio.aclose_forcefully(client)
            return
        self._live |= {client, server}
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._pipe, client, server, n.cancel_scope)
                n.start_soon(self._pipe, server, client, n.cancel_scope)
        finally:
            self._live -= {client, server}
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(server)

    @staticmethod
    async def _pipe(
        src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await src.receive_some(262144):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()
