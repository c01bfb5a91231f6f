"""The Docker endpoint under attack: a real appliance with a tethered VM
(``tests.vspc.docker_rig``: ``VspcService``, a real tether, the real ``docker`` client)
and raw connections to its Unix socket that send what no docker client would.

``Hostile.check_intact()`` is the honest side: the real ``docker ps`` lists the VM
and ``docker logs`` prints its lines, through the same socket, while an attack is on.
``answer(data)`` reads a response the endpoint wrote before closing."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.vspc.conftest import metric
from tests.vspc.docker_rig import Rig, docker_rig
from vspc.core.identity import vm_key
from vspc.sessions.api import SessionsApi

VM = "web-1"
#: The VM's main process: five lines, then quiet (``logs -f`` has a follower to hold).
MAIN = ["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done; exec sleep 100000"]
ERRORS = "vspc_protocol_errors_total"
CLOSE_WITHIN = 10.0


@dataclass
class Hostile:
    rig: Rig
    caplog: pytest.LogCaptureFixture

    async def connect(self) -> trio.SocketStream:
        return await trio.open_unix_socket(str(self.rig.sock))

    def errors(self) -> float:
        return metric(self.rig.service, ERRORS, where="docker")

    def followers(self, vm: str = VM) -> int:
        """Readers following the VM's container log (``docker logs -f``)."""
        sessions = self.rig.service.sessions
        assert sessions is not None
        v = sessions.logs._vms.get(vm_key(vm))
        return 0 if v is None else len(v.followers)

    def logged(self) -> list[str]:
        """The endpoint's warnings so far (one per refused connection)."""
        return [
            r.getMessage()
            for r in self.caplog.records
            if r.name == "vspc.docker" and r.levelno >= logging.WARNING
        ]

    async def check_intact(self) -> None:
        ps = await self.rig.docker("ps", "--format", "{{.Names}} {{.State}}")
        assert ps.code == 0 and f"{VM} running" in ps.out.decode().splitlines(), ps
        logs = await self.rig.docker("logs", "--tail", "2", VM)
        assert (logs.code, logs.out) == (0, b"line4\nline5\n"), logs


@asynccontextmanager
async def hostile(
    tmp: Path, caplog: pytest.LogCaptureFixture, **docker: Any
) -> AsyncIterator[Hostile]:
    caplog.set_level(logging.INFO, logger="vspc.docker")
    async with docker_rig(tmp, **docker) as rig:
        await rig.vm(VM, MAIN)
        await rig.logged(VM, b"line5\n")
        yield Hostile(rig, caplog)


async def until_closed(stream: trio.abc.Stream, timeout: float = CLOSE_WITHIN) -> bytes:
    """Everything the endpoint sends until it closes the connection."""
    got = bytearray()
    with trio.fail_after(timeout):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            got += chunk
    return bytes(got)


async def send_until_refused(stream: trio.abc.Stream, chunk: bytes, total: int) -> int:
    """Send ``chunk`` until ``total`` bytes or the endpoint stops taking them."""
    sent = 0
    try:
        while sent < total:
            await stream.send_all(chunk)
            sent += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return sent


def answers(data: bytes) -> list[tuple[int, dict[str, Any]]]:
    """Each (status, JSON body) in ``data``, responses with a Content-Length one after
    another (a JSON-less body is ``{}``)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"no whole response head in {data[:200]!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        fields = dict(ln.split(b": ", 1) for ln in lines[1:])
        n = int(fields.get(b"Content-Length", b"0"))
        body, data = rest[:n], rest[n:]
        is_json = fields.get(b"Content-Type") == b"application/json"
        out.append((status, json.loads(body) if is_json else {}))
    return out


def answer(data: bytes) -> tuple[int, dict[str, Any]]:
    (one,) = answers(data)
    return one


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def post(path: str, body: object) -> bytes:
    data = json.dumps(body).encode()
    return (
        (
            f"POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n"
        ).encode()
        + b"\r\n"
        + data
    )


async def exec_started(h: Hostile, cmd: list[str], *, stdin: bool) -> tuple[str, trio.SocketStream]:
    """An exec created and started on a hijacked connection (docker's upgrade): its id
    and the raw stream, past the ``101`` head."""
    s = await h.connect()
    create = {"AttachStdin": stdin, "AttachStdout": True, "AttachStderr": True, "Cmd": cmd}
    await s.send_all(post(f"/v1.45/containers/{VM}/exec", create))
    head = b""
    with trio.fail_after(CLOSE_WITHIN):
        while not (head.count(b"\r\n\r\n") and head.endswith(b"}\n")):
            head += await s.receive_some(65536)
    status, body = answer(head)
    assert status == 201, body
    start = post(f"/v1.45/exec/{body['Id']}/start", {"Detach": False, "Tty": False})
    start = start.replace(b"\r\n\r\n", b"\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n", 1)
    await s.send_all(start)
    head = b""
    with trio.fail_after(CLOSE_WITHIN):
        while b"\r\n\r\n" not in head:
            head += await s.receive_some(1)  # no further: what follows is the stream
    assert head.startswith(b"HTTP/1.1 101 "), head
    return str(body["Id"]), s


async def exec_inspect(h: Hostile, exec_id: str) -> dict[str, Any]:
    s = await h.connect()
    async with s:
        await s.send_all(f"GET /v1.45/exec/{exec_id}/json HTTP/1.1\r\nHost: docker\r\n".encode())
        await s.send_all(b"Connection: close\r\n\r\n")
        status, body = answer(await until_closed(s))
    assert status == 200, body
    return body


async def attached(h: Hostile, query: str) -> trio.SocketStream:
    """``docker attach``'s hijacked connection to the VM's main process."""
    s = await h.connect()
    req = f"POST /v1.45/containers/{VM}/attach?{query} HTTP/1.1\r\nHost: docker\r\n"
    await s.send_all(req.encode() + b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    head = b""
    with trio.fail_after(CLOSE_WITHIN):
        while b"\r\n\r\n" not in head:
            head += await s.receive_some(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s


async def clients_back_to(h: Hostile, n: int) -> None:
    """Until the endpoint holds ``n`` connections (woken as that changes)."""
    docker = h.rig.service.docker
    assert docker is not None
    with trio.fail_after(CLOSE_WITHIN):
        while docker.clients != n:
            await docker.clients_changed.wait()


async def output_ends(h: Hostile, vm: str, last: bytes) -> None:
    """Follow ``vm``'s log from now until ``last`` ends it; holds only a tail of it."""
    sessions = h.rig.service.sessions
    assert sessions is not None
    tail = b""
    chunks = SessionsApi(sessions).logs(vm, follow=True, tail=0)
    async with aclosing(chunks) as gen:
        async for chunk in gen:
            tail = (tail + chunk)[-2 * len(last) :]
            if tail.endswith(last):
                return
    raise AssertionError(f"the log of {vm} ended without {last!r}")
