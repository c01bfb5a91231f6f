"""A real ``VspcService`` with ``[sessions]`` and ``[docker]`` on, a real tether
(``tests.vspc.sessions_tether``: the main process a real process) joined to it by a
socketpair, and the real ``docker`` client binary run against the endpoint's socket."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from common.io.guestinfo.filestore import FileStore
from common.proto import guestinfo as gi
from common.proto.link.header import OriginHeader
from guestagent.reaper import Reaper
from tests.vspc.conftest import make_config
from tests.vspc.sessions_tether import Tether
from vspc.config import SessionsConfig
from vspc.docker_config import DockerConfig
from vspc.service import VspcService
from vspc.sessions.api import SessionsApi

DOCKER = shutil.which("docker")
needs_docker = pytest.mark.skipif(
    DOCKER is None, reason="no docker client binary (Debian's docker.io; no daemon needed)"
)
STEP = 30.0


@dataclass(frozen=True)
class Done:
    code: int
    out: bytes
    err: bytes


class RigTether(Tether):
    """The test tether, its main process without a pty (the agent's has one for a
    tty container): a resize for it is recorded, not applied."""

    def _resize(self, ch: int) -> None:
        try:
            super()._resize(ch)
        except ValueError:
            self.resized.append(self.sizes[ch])
            self.resize_seen.set()


@dataclass
class Vm:
    name: str
    session_id: str
    store: FileStore
    tether: RigTether


class Rig:
    def __init__(self, tmp: Path, service: VspcService, nursery: trio.Nursery) -> None:
        self.tmp = tmp
        self.service = service
        self.nursery = nursery
        assert service.docker is not None and service.docker.unix_path is not None
        self.sock = service.docker.unix_path
        self.gi_dir = tmp / "guestinfo"
        self.reaper = Reaper()  # one a process, shared by the tethers

    def env(self) -> dict[str, str]:
        return os.environ | {
            "DOCKER_HOST": f"unix://{self.sock}",
            "DOCKER_CONFIG": str(self.tmp / "docker-config"),
            "NO_COLOR": "1",
        }

    async def docker(self, *args: str, stdin: bytes = b"") -> Done:
        assert DOCKER is not None
        with trio.fail_after(STEP):
            p = await trio.run_process(
                [DOCKER, *args],
                stdin=stdin,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=self.env(),
            )
        return Done(p.returncode, p.stdout, p.stderr)

    async def open_docker(self, *args: str) -> trio.Process:
        assert DOCKER is not None
        return await trio.lowlevel.open_process(
            [DOCKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env()
        )

    async def vm(
        self,
        name: str,
        main: Sequence[str],
        *,
        tty: bool = False,
        openstdin: bool = False,
        address: str = "",
        publish_start: bool = True,
    ) -> Vm:
        """A tethered VM: session config in guestinfo (as the appliance writes it), the
        tether connected, ``started`` (and an address) published as the agent would."""
        assert self.service.sessions is not None
        sid = f"c-{name}"
        store = FileStore(self.gi_dir / f"{name}.json")
        cfg = gi.SessionConfig(id=sid, path=main[0], args=tuple(main), tty=tty, openstdin=openstdin)
        store.update(gi.encode_sessions([cfg]))
        await self.service.sessions.prepare(name)
        tether = RigTether(lambda: _secrets(store), list(main), reaper=self.reaper)
        await self.nursery.start(tether.run)
        a, b = trio.socket.socketpair()
        header = OriginHeader(host="esx1", vm=name, kind="pipe", label="session")
        self.nursery.start_soon(self.service.sessions.serve_stream, trio.SocketStream(a), header)
        self.nursery.start_soon(_tether_side, tether, trio.SocketStream(b))
        if publish_start:
            store.update(gi.encode_started(sid, True, starttime=1_700_000_000))
        if address:
            store.update(gi.encode_networks({"public": [ipaddress.ip_address(address)]}))
        s = self.service.sessions.find(name)
        assert s is not None
        with trio.fail_after(STEP):
            while s.main.state.value == "unknown":
                await s.changed.wait()
        return Vm(name, sid, store, tether)

    async def logged(self, name: str, want: bytes) -> None:
        """Until the container log of ``name`` holds ``want`` (followed, no polling)."""
        assert self.service.sessions is not None
        seen = bytearray()
        chunks = SessionsApi(self.service.sessions).logs(name, follow=True)
        with trio.fail_after(STEP):
            async with aclosing(chunks) as gen:
                async for chunk in gen:
                    seen += chunk
                    if want in seen:
                        return
        raise AssertionError(f"the log of {name} ended without {want!r}: {bytes(seen)!r}")


class Fifo:
    """A fifo read without blocking; our own writer keeps it from reading EOF."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.reader = trio.lowlevel.FdStream(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        self._keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        self.seen = bytearray()

    async def until(self, want: bytes) -> None:
        while want not in self.seen:
            self.seen += await self.reader.receive_some(4096)

    async def aclose(self) -> None:
        os.close(self._keep)
        await self.reader.aclose()


def _secrets(store: FileStore) -> tuple[bytes, ...]:
    return gi.keys.decode_session_secrets(store.read().values.get(gi.keys.session_secrets_key()))


async def _tether_side(tether: Tether, stream: trio.SocketStream) -> None:
    await tether.ep.run_connection(stream, handshake_timeout=10)


@asynccontextmanager
async def docker_rig(tmp: Path, **docker: object) -> AsyncIterator[Rig]:
    (tmp / "guestinfo").mkdir()
    base = make_config(tmp)
    config = base.__class__(
        **{
            **base.__dict__,
            "sessions": SessionsConfig(guestinfo_dir=tmp / "guestinfo", logs_dir=tmp / "clogs"),
            "docker": DockerConfig(enabled=True, socket=tmp / "docker.sock", **docker),  # type: ignore[arg-type]
        }
    )
    async with trio.open_nursery() as nursery:
        service: VspcService = await nursery.start(VspcService(config).run)
        rig = Rig(tmp, service, nursery)
        await nursery.start(rig.reaper.run)
        yield rig
        nursery.cancel_scope.cancel()
