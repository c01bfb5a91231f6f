"""An appliance ``SessionService`` and a real tether (``sessions_tether``) joined by a
socketpair, for the session API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from common.proto.guestinfo import keys as gik
from common.proto.link.header import OriginHeader
from tests.vspc.sessions_tether import Tether
from vspc.config import SessionsConfig
from vspc.guestinfo_watch import FileStoreWatcher
from vspc.sessions.api import SessionsApi
from vspc.sessions.service import SessionService

VM = "vm-one"


@dataclass
class Rig:
    api: SessionsApi
    service: SessionService
    tether: Tether
    guestinfo: FileStoreWatcher
    nursery: trio.Nursery
    ended: trio.Event = field(default_factory=trio.Event)  # the last connection ended

    def tether_secrets(self) -> tuple[bytes, ...]:
        """What the tether reads from its guestinfo (each connection)."""
        values = self.guestinfo.store(VM).read().values
        return gik.decode_session_secrets(values.get(gik.session_secrets_key()))

    async def connect(self) -> tuple[trio.SocketStream, trio.SocketStream]:
        """A new connection under the session (a socketpair); both ends returned."""
        a, b = trio.socket.socketpair()
        app, tet = trio.SocketStream(a), trio.SocketStream(b)
        header = OriginHeader(host="esx1", vm=VM, kind="pipe", label="session")
        self.nursery.start_soon(self.service.serve_stream, app, header)
        self.ended = trio.Event()
        self.nursery.start_soon(self._tether_side, tet, self.ended)
        return app, tet

    async def _tether_side(self, stream: trio.SocketStream, ended: trio.Event) -> None:
        await self.tether.ep.run_connection(stream, handshake_timeout=10)
        ended.set()


@asynccontextmanager
async def rig(tmp_path: Path, main: Sequence[str] | None = None) -> AsyncIterator[Rig]:
    gi = FileStoreWatcher(tmp_path / "guestinfo")
    (tmp_path / "guestinfo").mkdir(exist_ok=True)
    cfg = SessionsConfig(logs_dir=tmp_path / "logs", guestinfo_dir=tmp_path / "guestinfo")
    service = SessionService(cfg, gi)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await service.prepare(VM)
        holder: list[Rig] = []
        tether = Tether(lambda: holder[0].tether_secrets(), main)
        r = Rig(SessionsApi(service), service, tether, gi, nursery)
        holder.append(r)
        await nursery.start(tether.run)
        yield r
        nursery.cancel_scope.cancel()
