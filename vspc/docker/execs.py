"""``docker exec`` on the Docker endpoint: create, start on a hijacked connection,
resize, inspect (for the exit code), over ``SessionsApi.exec``.

Start hijacks the connection (``Responder.hijack``): the client's bytes are the
process's stdin (with ``AttachStdin``; the client's half-close is its EOF), its
output goes back raw with a tty or in docker's multiplexed frames without one.
The exit code is recorded before the connection closes, so the client's
inspect after the stream ends sees it. A detached start (``docker exec -d``)
answers 200 at once and runs the process in ``nursery`` (the server's) with
nothing attached; its exit code then shows in the exec's inspect. A tty exec
created without a size (docker 20.10's API 1.41 has no ``ConsoleSize``; its
client resizes right after the start) waits up to ``FIRST_SIZE_WAIT`` for that
first resize and starts its pty at that size, so the process sees it at once. A client
that hangs up (``hangup``) ends the exec: its channel closes and the tether ends the process.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

import trio

from common.ops.wiretext import wire
from vspc.core import docker_shapes as shapes
from vspc.core.docker_api import DockerError, Route, query_int
from vspc.core.docker_exec import ExecConfig, ExecInstance, ExecTable, StartConfig
from vspc.core.docker_frames import StdStream, frame
from vspc.docker.containers import Containers
from vspc.docker.hangup import until_hangup
from vspc.docker.http import Request, Responder
from vspc.sessions.api import ExecRefused, NoSession, SessionsApi

log = logging.getLogger("vspc.docker")

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"
NOT_FOUND_EXIT = 127
FIRST_SIZE_WAIT = 1.0  # seconds a tty exec without a size waits for the client's first


class Execs:
    def __init__(self, containers: Containers) -> None:
        self.containers = containers
        self.table = ExecTable()
        self._resize: dict[str, trio.MemorySendChannel[tuple[int, int]]] = {}
        self.nursery: trio.Nursery | None = None  # where detached execs run (the server's)

    def _api(self) -> SessionsApi:
        if self.containers.api is None:
            raise DockerError(501, "docker exec needs the session service ([sessions])")
        return self.containers.api

    async def create(self, r: Route, req: Request, resp: Responder) -> None:
        cfg = ExecConfig.from_body(await req.body())
        self._api()
        f = await self.containers.find(r.ref)
        if not shapes.container_state(f).running:
            raise DockerError(409, f"Container {f.id} is not running")
        inst = ExecInstance(secrets.token_hex(32), f.id, f.name, cfg)
        self.table.add(inst)
        await resp.send_json(201, {"Id": inst.id})

    async def inspect(self, r: Route, req: Request, resp: Responder) -> None:
        await resp.send_json(200, self.table.get(r.ref).inspect())

    async def resize(self, r: Route, req: Request, resp: Responder) -> None:
        inst = self.table.get(r.ref)
        size = (query_int(r, "h", 0), query_int(r, "w", 0))
        ch = self._resize.get(inst.id)
        if ch is not None:
            try:
                ch.send_nowait(size)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # a flood of resizes: the latest ones are dropped, never queued
        await resp.send(200)

    async def start(self, r: Route, req: Request, resp: Responder) -> None:
        start = StartConfig.from_body(await req.body())
        inst = self.table.get(r.ref)
        if inst.started:
            raise DockerError(409, f"exec {inst.id[:12]} has already been started")
        api = self._api()
        if start.detach:
            await self._detached(api, inst, start, resp)
            return
        inst.started = inst.running = True
        tty = inst.config.tty or start.tty
        stream, leftover = await resp.hijack(RAW if tty else MULTIPLEXED)
        send, sizes = trio.open_memory_channel[tuple[int, int]](16)
        self._resize[inst.id] = send
        try:
            size = start.size if start.size != (0, 0) else inst.config.size
            if tty and size == (0, 0):  # docker 20.10: no ConsoleSize, a resize just after
                with trio.move_on_after(FIRST_SIZE_WAIT):
                    size = await sizes.receive()
            codes: list[int] = []

            async def run() -> None:
                codes.append(await self._run(api, inst, stream, leftover, tty, size, sizes))

            if await until_hangup(stream, run):
                inst.exit_code = codes[0]
            else:  # the exec's channel is closed: the tether ends the process
                log.info("docker exec in %s: the client hung up", wire(inst.vm))
                inst.exit_code = shapes.UNKNOWN_EXIT
        finally:
            inst.running = False
            self._resize.pop(inst.id, None)
            await trio.aclose_forcefully(stream)

    async def _detached(
        self, api: SessionsApi, inst: ExecInstance, start: StartConfig, resp: Responder
    ) -> None:
        """``docker exec -d``: started in the background, no stream attached; its
        exit code is then in the exec's inspect."""
        if self.nursery is None:
            raise DockerError(503, "the endpoint is not serving detached execs now")
        inst.started = inst.running = True
        size = start.size if start.size != (0, 0) else inst.config.size
        self.nursery.start_soon(self._background, api, inst, inst.config.tty or start.tty, size)
        await resp.send(200)

    async def _background(
        self, api: SessionsApi, inst: ExecInstance, tty: bool, size: tuple[int, int]
    ) -> None:
        c = inst.config
        try:
            status = await api.exec(
                inst.vm, list(c.cmd), tty=tty, env=c.env, cwd=c.cwd, user=c.user, size=size
            )
            inst.exit_code = 128 + status.signal if status.signal else (status.code or 0)
        except (ExecRefused, NoSession) as e:
            log.info("docker exec -d in %s: %s", wire(inst.vm), wire(str(e), 200))
            inst.exit_code = NOT_FOUND_EXIT
        except Exception:  # never the server's other connections
            log.exception("docker exec -d in %s failed", wire(inst.vm))
            inst.exit_code = shapes.UNKNOWN_EXIT
        finally:
            inst.running = False

    async def _run(
        self,
        api: SessionsApi,
        inst: ExecInstance,
        stream: trio.abc.Stream,
        leftover: bytes,
        tty: bool,
        size: tuple[int, int],
        sizes: trio.MemoryReceiveChannel[tuple[int, int]],
    ) -> int:
        async def out(data: bytes) -> None:
            await stream.send_all(data if tty else frame(StdStream.STDOUT, data))

        async def err(data: bytes) -> None:
            await stream.send_all(frame(StdStream.STDERR, data))

        c = inst.config
        try:
            status = await api.exec(
                inst.vm,
                list(c.cmd),
                stdin=_stdin(stream, leftover) if c.stdin else None,
                stdout=out if c.stdout else None,
                stderr=err if c.stderr else None,
                tty=tty,
                env=c.env,
                cwd=c.cwd,
                user=c.user,
                size=size,
                resize=sizes,
            )
        except ExecRefused as e:
            msg = f"OCI runtime exec failed: {e.reason}\r\n".encode()
            await _quietly(stream, msg if tty else frame(StdStream.STDERR, msg))
            return NOT_FOUND_EXIT
        except NoSession as e:
            await _quietly(stream, frame(StdStream.SYSTEMERR, str(e).encode()))
            return NOT_FOUND_EXIT
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("docker exec in %s: the client left", wire(inst.vm))
            return shapes.UNKNOWN_EXIT
        return 128 + status.signal if status.signal else (status.code or 0)


async def _stdin(stream: trio.abc.Stream, leftover: bytes) -> AsyncIterator[bytes]:
    if leftover:
        yield leftover
    while True:
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not data:
            return
        yield bytes(data)


async def _quietly(stream: trio.abc.Stream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
