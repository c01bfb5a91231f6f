"""The Docker Engine API verbs the endpoint serves, over ``vspc.docker.http``.

``DockerApi(containers, sessions).handle`` is the HTTP handler: it routes the
request (``vspc.core.docker_api``) and answers ``/_ping``, ``/version``,
``/info``, ``ps``, ``inspect``, ``logs``, ``wait``, ``kill``, ``stop``, ``top``,
``exec`` (``vspc.docker.execs``) and ``attach`` (``vspc.docker.attach``).
Everything else is docker's error shape: ``501`` with one line saying this
endpoint does not create containers, ``404`` for inspecting another kind of
object. ``DockerError`` from any step is the answer; an unexpected error is a
``500`` and one log line. ``stop`` sends the stop signal (the query's, the
container's ``StopSignal``, or SIGTERM), gives ``t`` seconds, then SIGKILL and
at most ``KILL_WAIT`` more.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from functools import partial

import trio

from common.ops.wiretext import wire
from vspc.containerlogs.follow import FollowLagged
from vspc.core import docker_shapes as shapes
from vspc.core.docker_api import (
    NOT_CREATING,
    DockerError,
    Route,
    Verb,
    query_bool,
    query_int,
    route,
    unsupported_message,
)
from vspc.core.docker_params import LogsQuery, parse_filters, parse_signal
from vspc.core.linelog import Stream as LogStream
from vspc.docker.attach import Attachments
from vspc.docker.containers import Containers
from vspc.docker.execs import Execs
from vspc.docker.http import BodyTooLarge, Request, Responder
from vspc.docker.logs import follow_seconds, logs_until
from vspc.sessions.api import ExecRefused, SessionsApi, Shape

log = logging.getLogger("vspc.docker")

VERSION = "0.1.0-vic"
KILL_WAIT = 30.0
TOP_BYTES = 1 << 20
MAX_STOP_WAIT = 3600
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"
LATER = "is not served by this endpoint yet (a later step of issue 14)"

Answer = Callable[[Route, Request, Responder], Awaitable[None]]


class DockerApi:
    def __init__(
        self,
        containers: Containers,
        *,
        name: str = "vic-appliance",
        clock: Callable[[], float],
        on_request: Callable[[str, int], None] = lambda verb, status: None,
    ) -> None:
        self.containers = containers
        self.api: SessionsApi | None = containers.api
        self.name = name
        self.clock = clock
        self.on_request = on_request
        self.execs = Execs(containers)
        self.attachments = Attachments(containers)
        self._answers: dict[Verb, Answer] = {
            Verb.PING: self.ping,
            Verb.VERSION: self.version,
            Verb.INFO: self.info,
            Verb.PS: self.ps,
            Verb.INSPECT: self.inspect,
            Verb.LOGS: self.logs,
            Verb.WAIT: self.wait,
            Verb.KILL: self.kill,
            Verb.STOP: self.stop,
            Verb.NO_SUCH_OBJECT: self.no_such_object,
            Verb.TOP: self.top,
            Verb.EXEC_CREATE: self.execs.create,
            Verb.EXEC_START: self.execs.start,
            Verb.EXEC_RESIZE: self.execs.resize,
            Verb.EXEC_INSPECT: self.execs.inspect,
            Verb.ATTACH: self.attachments.attach,
            Verb.RESIZE: self.attachments.resize,
        }

    async def handle(self, req: Request, resp: Responder) -> None:
        verb = "bad"
        try:
            r = route(req.method, req.target)
            verb = r.verb.value
            answer = self._answers.get(r.verb, self.unsupported)
            await answer(r, req, resp)
        except DockerError as e:
            if not resp.started:
                await resp.send_error(e.status, e.message)
            else:
                resp.broken = True
        except (BodyTooLarge, trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            log.exception("docker endpoint: %s %s failed", wire(req.method), wire(req.target))
            if not resp.started:
                await resp.send_error(500, "internal error (see the appliance's log)")
            resp.broken = True
        finally:
            self.on_request(verb, resp.status)

    # -- the daemon ------------------------------------------------------------------
    async def ping(self, r: Route, req: Request, resp: Responder) -> None:
        hs = [
            ("Docker-Experimental", "false"),
            ("Builder-Version", "1"),
            ("Cache-Control", "no-cache, no-store, must-revalidate"),
            ("Pragma", "no-cache"),
        ]
        await resp.send(200, b"OK", "text/plain; charset=utf-8", hs)

    async def version(self, r: Route, req: Request, resp: Responder) -> None:
        await resp.send_json(200, shapes.version_body(VERSION))

    async def info(self, r: Route, req: Request, resp: Responder) -> None:
        states = [shapes.container_state(f) for f in await self.containers.all()]
        await resp.send_json(200, shapes.info_body(self.name, VERSION, states))

    # -- containers ------------------------------------------------------------------
    async def ps(self, r: Route, req: Request, resp: Responder) -> None:
        filters = parse_filters(r.arg("filters"))
        every = query_bool(r, "all") or "status" in filters or "exited" in filters
        limit = query_int(r, "limit", -1)
        out = []
        for f in await self.containers.all():
            c = shapes.candidate(f)
            if (every or c.status == "running") and filters.match(c):
                out.append(shapes.ps_entry(f, self.clock()))
        out.sort(key=lambda e: (-e["Created"], e["Names"][0]))
        await resp.send_json(200, out if limit <= 0 else out[:limit])

    async def inspect(self, r: Route, req: Request, resp: Responder) -> None:
        f = await self.containers.find(r.ref)
        await resp.send_json(200, shapes.inspect(f))

    async def logs(self, r: Route, req: Request, resp: Responder) -> None:
        q = LogsQuery.from_route(r)
        f = await self.containers.find(r.ref)
        if self.api is None:
            raise DockerError(501, "container logs need the session service ([sessions])")
        cfg = f.config()
        tty = cfg is not None and cfg.tty
        streams = frozenset(
            s for s, on in ((LogStream.STDOUT, q.stdout), (LogStream.STDERR, q.stderr)) if on
        )
        shape = Shape.TEXT if tty else Shape.DOCKER
        if q.until is not None:
            chunks = logs_until(self.api.service.logs, f.name, q, shape, self.clock())
        else:
            chunks = self.api.logs(
                f.name,
                tail=q.tail,
                since=q.since,
                follow=q.follow,
                timestamps=q.timestamps,
                streams=streams,
                shape=shape,
            )
        await resp.start(200, RAW if tty else MULTIPLEXED)
        deadline = trio.current_time() + follow_seconds(q, self.clock)

        async def pump() -> None:
            async with aclosing(chunks) as gen:
                try:
                    while True:
                        with trio.move_on_at(deadline) as cs:  # --until with -f: until then
                            chunk = await anext(gen)
                        if cs.cancelled_caught:
                            return
                        await resp.write(chunk)
                except StopAsyncIteration:
                    pass
                except FollowLagged:
                    log.info("docker logs -f of %s fell behind: ended", wire(f.name))

        await resp.until_gone(pump)

    async def wait(self, r: Route, req: Request, resp: Responder) -> None:
        f = await self.containers.find(r.ref)
        # docker's own daemon takes an empty condition (older clients send one) as the default
        condition = r.arg("condition", "") or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise DockerError(400, f"invalid condition: {condition[:40]!r}")
        await resp.start(200, "application/json")
        result: list[shapes.State] = []

        async def until_exit() -> None:
            result.append(await self.containers.wait_exited(f.name))

        if await resp.until_gone(until_exit) and result:
            body: dict[str, object] = {"StatusCode": result[0].exit_code, "Error": None}
            if result[0].error:
                body["Error"] = {"Message": result[0].error}
            await resp.write(json.dumps(body).encode() + b"\n")

    async def kill(self, r: Route, req: Request, resp: Responder) -> None:
        signo = parse_signal(r.arg("signal", "KILL") or "KILL")
        f = await self.containers.find(r.ref)
        if not shapes.container_state(f).running:
            raise DockerError(
                409, f"Cannot kill container: {r.ref}: Container {f.id} is not running"
            )
        await self.containers.signal(f, signo)
        await resp.send(204)

    async def stop(self, r: Route, req: Request, resp: Responder) -> None:
        f = await self.containers.find(r.ref)
        cfg = f.config()
        sig = r.arg("signal") or (cfg.stopsignal if cfg is not None else "") or "TERM"
        signo = parse_signal(sig)
        t = query_int(r, "t", 10)
        grace = MAX_STOP_WAIT if t < 0 else min(t, MAX_STOP_WAIT)
        if not shapes.container_state(f).running:
            await resp.send(304)
            return
        await self.containers.signal(f, signo)
        with trio.move_on_after(grace):
            await self.containers.wait_exited(f.name)
            await resp.send(204)
            return
        await self.containers.signal(f, parse_signal("KILL"))
        with trio.move_on_after(KILL_WAIT):
            await self.containers.wait_exited(f.name)
            await resp.send(204)
            return
        raise DockerError(500, f"{f.name} did not stop within {KILL_WAIT:g} s of SIGKILL")

    async def top(self, r: Route, req: Request, resp: Responder) -> None:
        """``ps`` (with the client's ``ps_args``, default ``-ef``) run in the container."""
        f = await self.containers.find(r.ref)
        if self.api is None or not shapes.container_state(f).running:
            raise DockerError(409, f"Container {f.id} is not running")
        out, err = bytearray(), bytearray()

        async def keep(buf: bytearray, data: bytes) -> None:
            buf += data[: max(0, TOP_BYTES - len(buf))]

        argv = ["ps", *(r.arg("ps_args") or "-ef").split()]
        try:
            status = await self.api.exec(
                f.name, argv, stdout=partial(keep, out), stderr=partial(keep, err), timeout=10
            )
        except (ExecRefused, trio.TooSlowError) as e:
            raise DockerError(500, f"ps in {f.name}: {str(e) or 'timed out'}") from None
        if status.code != 0:
            why = err.decode(errors="replace").strip() or f"exit status {status.code}"
            raise DockerError(500, f"ps in {f.name} failed: {why}")
        await resp.send_json(200, shapes.ps_table(out.decode(errors="replace")))

    # -- the rest --------------------------------------------------------------------
    async def no_such_object(self, r: Route, req: Request, resp: Responder) -> None:
        kind = r.path.split("/")[1].removesuffix("s")
        raise DockerError(404, f"No such {kind}: {r.ref}")

    async def unsupported(self, r: Route, req: Request, resp: Responder) -> None:
        if r.verb is Verb.UNSUPPORTED:
            raise DockerError(501, unsupported_message(req.method, r.path))
        raise DockerError(501, f"vic-channel: docker {r.verb.value} {LATER}; {NOT_CREATING}")
