"""An appliance side for tether tests: a unix listener running a ``SessionEndpoint``."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import trio

from common.io.guestinfo.filestore import FileStore
from common.io.sealedsession import SessionEndpoint
from common.proto.guestinfo.keys import encode_session_secrets, session_secrets_key
from common.proto.session import channels as chs
from common.proto.session.messages import ExecSpec, ExitStatus, Stream
from common.proto.session.session import Session


@dataclass
class ExecResult:
    """What the appliance saw of one exec channel."""

    out: dict[Stream, bytearray] = field(default_factory=dict)
    status: ExitStatus | None = None
    refused: str | None = None
    opened: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    changed: trio.Event = field(default_factory=trio.Event)

    def text(self, stream: Stream) -> bytes:
        return bytes(self.out.get(stream, b""))

    async def wait_for(self, stream: Stream, want: bytes) -> None:
        while want not in self.text(stream):
            assert not self.done.is_set(), f"ended before {want!r}: {self.text(stream)!r}"
            self.changed = trio.Event()
            await self.changed.wait()


class Appliance:
    """Accepts the tether's connections on ``path``; one endpoint, one session."""

    def __init__(self, path: str, secret: bytes) -> None:
        self.path = path
        self.secret = secret
        self.endpoint = self._new_endpoint()
        self.results: dict[int, ExecResult] = {}
        self.streams: list[trio.SocketStream] = []
        self.ends: list[object] = []
        self._ended = trio.Event()
        self._restarted = trio.Event()

    def _new_endpoint(self) -> SessionEndpoint:
        return SessionEndpoint(
            chs.Role.APPLIANCE,
            Session(chs.Role.APPLIANCE, os.urandom(16)),
            lambda: [self.secret],
            name="appliance",
        )

    async def restart(self) -> None:
        """The appliance lost its state: a new session (new id), the link cut."""
        self.endpoint = self._new_endpoint()
        self.results = {}
        self._restarted.set()
        await self.cut()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        lst = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await lst.bind(self.path)
        lst.listen(4)
        async with trio.open_nursery() as n:
            n.start_soon(self._dispatch)
            task_status.started()
            while True:
                sock, _ = await lst.accept()
                stream = trio.SocketStream(sock)
                self.streams.append(stream)
                n.start_soon(self._run, stream)

    async def serve_line(
        self,
        line: trio.abc.Stream,
        *,
        handshake_timeout: float,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """A serial line: sealed channel after sealed channel on the same stream."""
        async with trio.open_nursery() as n:
            n.start_soon(self._dispatch)
            task_status.started()
            while True:
                end = await self.endpoint.run_connection(
                    line, handshake_timeout=handshake_timeout, close_stream=False
                )
                self._add_end(end)

    async def _run(self, stream: trio.SocketStream) -> None:
        self._add_end(await self.endpoint.run_connection(stream, handshake_timeout=10))

    def _add_end(self, end: object) -> None:
        self.ends.append(end)
        self._ended.set()
        self._ended = trio.Event()

    async def wait_ends(self, n: int) -> None:
        """Until ``n`` connections have ended."""
        while len(self.ends) < n:
            await self._ended.wait()

    async def cut(self) -> None:
        """Close the newest connection under the session (a link cut)."""
        await self.streams[-1].aclose()

    async def _dispatch(self) -> None:
        while True:
            self._restarted = trio.Event()
            async with trio.open_nursery() as n:
                n.start_soon(self._dispatch_one, self.endpoint)
                await self._restarted.wait()
                n.cancel_scope.cancel()

    async def _dispatch_one(self, endpoint: SessionEndpoint) -> None:
        async for ev in endpoint.events():
            r = self.results.get(getattr(ev, "ch", -1))
            if r is None:
                continue
            match ev:
                case chs.ChannelOpened():
                    r.opened.set()
                case chs.Data(_, stream, data):
                    r.out.setdefault(stream, bytearray()).extend(data)
                case chs.Exited(_, status):
                    r.status = status
                case chs.OpenRefused(_, reason):
                    r.refused = reason
                    r.done.set()
                case chs.ChannelClosed():
                    r.done.set()
                case _:
                    pass
            r.changed.set()

    def open_exec(self, spec: ExecSpec) -> tuple[int, ExecResult]:
        ch = self.endpoint.open_exec(spec)
        r = self.results[ch] = ExecResult()
        return ch, r

    async def exec(self, spec: ExecSpec, stdin: bytes = b"") -> ExecResult:
        """Run ``spec`` to its end with ``stdin`` (then closed)."""
        ch, r = self.open_exec(spec)
        if stdin:
            assert await self.endpoint.send_all(ch, Stream.STDIN, stdin)
        self.endpoint.close_stdin(ch)
        await r.done.wait()
        return r


def write_secrets(store_path: str, *secrets: bytes) -> None:
    FileStore(store_path).update({session_secrets_key(): encode_session_secrets(secrets)})
