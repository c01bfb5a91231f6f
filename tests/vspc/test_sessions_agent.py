"""The appliance's session service against the agent's own tether (``guestagent.tether``):
secrets through the guestinfo file store, connections as relayed streams labelled
``session``, execs as the agent runs them; a rotation followed by a cut."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from common.io.guestinfo.filestore import FileStore
from common.proto.link.header import OriginHeader
from guestagent.backends.file import FileGuestBackend
from guestagent.channels import Channel
from guestagent.config import SessionSection
from guestagent.reaper import Reaper
from guestagent.tether import Tether
from vspc.config import SessionsConfig
from vspc.guestinfo_watch import FileStoreWatcher
from vspc.sessions.api import SessionsApi
from vspc.sessions.service import SessionService

pytestmark = pytest.mark.trio

VM = "vm-agent"


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    async def __call__(self, data: bytes) -> None:
        self.data += data


async def test_agent_tether_exec_rotation_and_cut(tmp_path: Path) -> None:
    gi_dir = tmp_path / "gi"
    gi_dir.mkdir()
    cfg = SessionsConfig(guestinfo_dir=gi_dir, logs_dir=tmp_path / "logs")
    service = SessionService(cfg, FileStoreWatcher(gi_dir))
    api = SessionsApi(service)
    appliance_ends: list[trio.SocketStream] = []

    async def connect() -> Channel:  # the relay: each connection a new relayed stream
        a, b = trio.socket.socketpair()
        app = trio.SocketStream(a)
        appliance_ends.append(app)
        header = OriginHeader(host="esx1", vm=VM, kind="pipe", label="session")
        nursery.start_soon(service.serve_stream, app, header)
        return Channel(trio.SocketStream(b), "socketpair")

    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await service.prepare(VM)  # the secret is in guestinfo before the agent looks
        reaper = Reaper()
        await nursery.start(reaper.run)
        tether = Tether(
            SessionSection(enabled=True, transport="unix"),
            connect,
            backend=FileGuestBackend(FileStore(gi_dir / f"{VM}.json")),
            reaper=reaper,
        )
        await nursery.start(tether.run)
        with trio.fail_after(30):
            out, err = Collect(), Collect()

            async def stdin() -> AsyncIterator[bytes]:
                yield b"x" * 100_000

            st = await api.exec(
                VM, ["sh", "-c", "wc -c; echo e >&2; exit 2"], stdin=stdin(), stdout=out, stderr=err
            )
            assert (st.code, bytes(out.data).strip(), bytes(err.data)) == (2, b"100000", b"e\n")

            await service.rotate(VM)
            while tether.secrets() != service.secrets(VM):  # the agent reads (new, old)
                await tether.secrets.wait_update()
            await appliance_ends[-1].aclose()  # cut: the next connection uses the new one
            st = await api.exec(VM, ["true"])
            assert st.code == 0
            assert len(appliance_ends) >= 2
            assert tether.endpoint.last_established is not None
            assert tether.endpoint.last_established.secret_index == 0
        nursery.cancel_scope.cancel()


async def test_agent_restart_gets_a_new_session(tmp_path: Path) -> None:
    """The agent restarts (a fresh tether, no session): the appliance starts anew."""
    gi_dir = tmp_path / "gi"
    gi_dir.mkdir()
    service = SessionService(SessionsConfig(guestinfo_dir=gi_dir), FileStoreWatcher(gi_dir))
    api = SessionsApi(service)

    async def connect() -> Channel:
        a, b = trio.socket.socketpair()
        header = OriginHeader(host="esx1", vm=VM, kind="pipe", label="session")
        nursery.start_soon(service.serve_stream, trio.SocketStream(a), header)
        return Channel(trio.SocketStream(b), "socketpair")

    def tether(reaper: Reaper) -> Tether:
        backend = FileGuestBackend(FileStore(gi_dir / f"{VM}.json"))
        cfg = SessionSection(enabled=True, transport="unix")
        return Tether(cfg, connect, backend=backend, reaper=reaper)

    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await service.prepare(VM)
        reaper = Reaper()
        await nursery.start(reaper.run)
        with trio.fail_after(30):
            async with trio.open_nursery() as first:
                await first.start(tether(reaper).run)
                assert (await api.exec(VM, ["true"])).code == 0
                first.cancel_scope.cancel()  # the agent is gone
            old = service.find(VM)
            assert old is not None
            await nursery.start(tether(reaper).run)  # and back, knowing nothing
            while (s := service.find(VM)) is old or s is None or not s.connected:
                await (s or old).changed.wait()  # renewed on its SESSION_MISMATCH, then resumed
            assert (await api.exec(VM, ["sh", "-c", "exit 9"])).code == 9
        nursery.cancel_scope.cancel()
