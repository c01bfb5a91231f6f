"""``docker attach`` on the Docker endpoint: the main process on a hijacked connection.

``POST /containers/{id}/attach?stream=1&stdin=1&stdout=1&stderr=1`` hijacks
the connection (``Responder.hijack``) onto ``SessionsApi.attach``: the main
process's output from now on (raw with a tty, docker's multiplexed frames
without), the client's bytes its input when ``stdin`` is asked for. The
detach keys (``detachKeys``, default ctrl-p ctrl-q) end the attachment and
leave the container running; the client's half-close ends only its input.
When the main process exits the connection closes (the client learns the
exit code from its ``wait``). ``POST /containers/{id}/resize`` reaches the
main process through every attachment of that container. A client that hangs
up (``hangup``) ends its attachment even when nothing is written.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from functools import partial

import trio

from common.ops.wiretext import wire
from vspc.core import docker_shapes as shapes
from vspc.core.docker_api import DockerError, Route, query_bool, query_int
from vspc.core.docker_exec import DetachScanner, parse_detach_keys
from vspc.core.docker_frames import StdStream, frame
from vspc.docker.containers import Containers
from vspc.docker.hangup import until_hangup
from vspc.docker.http import Request, Responder
from vspc.sessions.api import ExecRefused, NoSession, SessionsApi

log = logging.getLogger("vspc.docker")

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"


class Attachments:
    def __init__(self, containers: Containers) -> None:
        self.containers = containers
        self._resize: dict[str, set[trio.MemorySendChannel[tuple[int, int]]]] = {}

    def _api(self) -> SessionsApi:
        if self.containers.api is None:
            raise DockerError(501, "docker attach needs the session service ([sessions])")
        return self.containers.api

    async def resize(self, r: Route, req: Request, resp: Responder) -> None:
        f = await self.containers.find(r.ref)
        size = (query_int(r, "h", 0), query_int(r, "w", 0))
        for ch in self._resize.get(f.name, set()):
            try:
                ch.send_nowait(size)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # a flood of resizes: the latest ones are dropped, never queued
        await resp.send(200)

    async def attach(self, r: Route, req: Request, resp: Responder) -> None:
        await req.body()
        keys = parse_detach_keys(r.arg("detachKeys"))
        api = self._api()
        f = await self.containers.find(r.ref)
        if not shapes.container_state(f).running:
            raise DockerError(409, "You cannot attach to a stopped container, start it first")
        cfg = f.config()
        tty = cfg is not None and cfg.tty
        stream, leftover = await resp.hijack(RAW if tty else MULTIPLEXED)
        send, sizes = trio.open_memory_channel[tuple[int, int]](16)
        self._resize.setdefault(f.name, set()).add(send)
        try:
            await until_hangup(
                stream, partial(self._run, api, f.name, r, stream, leftover, tty, keys, sizes)
            )
        finally:
            self._resize[f.name].discard(send)
            if not self._resize[f.name]:
                del self._resize[f.name]
            await trio.aclose_forcefully(stream)

    async def _run(
        self,
        api: SessionsApi,
        vm: str,
        r: Route,
        stream: trio.abc.Stream,
        leftover: bytes,
        tty: bool,
        keys: bytes,
        sizes: trio.MemoryReceiveChannel[tuple[int, int]],
    ) -> None:
        async def out(data: bytes) -> None:
            await stream.send_all(data if tty else frame(StdStream.STDOUT, data))

        async def err(data: bytes) -> None:
            await stream.send_all(frame(StdStream.STDERR, data))

        scanner = DetachScanner(keys)
        with trio.CancelScope() as scope:
            stdin = _input(stream, leftover, scanner, scope) if query_bool(r, "stdin") else None
            try:
                await api.attach(
                    vm,
                    stdin=stdin,
                    stdout=out if query_bool(r, "stdout") else None,
                    stderr=err if query_bool(r, "stderr") else None,
                    resize=sizes,
                )
            except (ExecRefused, NoSession) as e:
                msg = f"cannot attach: {e}\n".encode()
                await _quietly(stream, msg if tty else frame(StdStream.SYSTEMERR, msg))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.info("docker attach to %s: the client left", wire(vm))
        if scanner.detached:
            log.info("docker attach to %s: detached", wire(vm))


async def _input(
    stream: trio.abc.Stream, leftover: bytes, scanner: DetachScanner, scope: trio.CancelScope
) -> AsyncIterator[bytes]:
    data: bytes | bytearray = leftover
    while True:
        if data:
            forward = scanner.feed(bytes(data))
            if forward:
                yield forward
            if scanner.detached:
                scope.cancel()
                return
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not data:
            return


async def _quietly(stream: trio.abc.Stream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
