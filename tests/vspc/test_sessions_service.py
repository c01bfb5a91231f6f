"""The session service across connections: a cut under a running exec (exactly
once after the resume), secret rotation, a tether that lost its session."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.vspc.sessions_tether import Tether
from tests.vspc.sessions_util import VM, Rig, rig
from vspc.sessions.channel import MainState, VmSession

pytestmark = pytest.mark.trio


class Until:
    """Collects bytes; ``await wait(n)`` until ``n`` have come."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._grew = trio.Event()

    async def __call__(self, data: bytes) -> None:
        self.data += data
        self._grew.set()
        self._grew = trio.Event()

    async def wait(self, n: int) -> None:
        while len(self.data) < n:
            await self._grew.wait()


def session(r: Rig) -> VmSession:
    s = r.service.find(VM)
    assert s is not None
    return s


async def wait_live(r: Rig, live: bool) -> None:
    ep = r.service._vms[VM].ep
    while ep.live is not live or r.tether.ep.live is not live:
        with trio.move_on_after(0.05):  # either end may change: look at both again
            await ep.wait_changed()


async def test_cut_under_a_running_exec_resumes_exactly_once(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        _, tet = await r.connect()
        out = Until()
        send, receive = trio.open_memory_channel[bytes](8)
        result = []

        async def run() -> None:
            result.append(await r.api.exec(VM, ["cat"], stdin=receive, stdout=out))

        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(run)
                await send.send(b"abc")
                await out.wait(3)
                await tet.aclose()  # the stream under the session is cut
                await wait_live(r, False)
                await send.send(b"def")  # while no connection carries the session
                await r.connect()
                await out.wait(6)
                await send.aclose()
        assert result[0].code == 0
        assert bytes(out.data) == b"abcdef"
        assert r.api.status(VM).connections == 2


async def test_rotation_new_connections_use_the_new_secret(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        old = r.tether_secrets()
        assert len(old) == 1 and len(old[0]) == 32
        await r.service.rotate(VM)
        new = r.tether_secrets()
        assert len(new) == 2 and new[1] == old[0] and new[0] != old[0]
        # a tether that still holds only the old secret is refused
        stale = Tether(lambda: old, reaper=r.tether.reaper)
        async with trio.open_nursery() as n:
            await n.start(stale.run)
            a, b = trio.socket.socketpair()
            from common.proto.link.header import OriginHeader

            header = OriginHeader(host="esx1", vm=VM, kind="pipe", label="session")
            n.start_soon(r.service.serve_stream, trio.SocketStream(a), header)
            with trio.fail_after(10):
                end = await stale.ep.run_connection(trio.SocketStream(b), handshake_timeout=5)
            assert not end.established
            n.cancel_scope.cancel()
        # the tether reading guestinfo (new, old) takes the new one: index 0
        await r.connect()
        with trio.fail_after(10):
            await wait_live(r, True)
        assert r.tether.ep.last_established is not None
        assert r.tether.ep.last_established.secret_index == 0
        st = await r.api.exec(VM, ["true"])
        assert st.code == 0


async def test_tether_lost_its_session_a_new_one_starts(tmp_path: Path) -> None:
    main = ["sh", "-c", "echo up; exec sleep 1000"]
    async with rig(tmp_path, main=main) as r:
        _, tet = await r.connect()
        with trio.fail_after(5):
            await session(r).wait_main(MainState.RUNNING)
            await tet.aclose()
            await wait_live(r, False)
            # the tether restarts: a fresh session, which the appliance's RESUME names
            fresh = Tether(r.tether_secrets, main, reaper=r.tether.reaper)
            r.tether = fresh
            await r.nursery.start(fresh.run)
            old = session(r)
            # the fresh tether answers our RESUME with SESSION_MISMATCH: the appliance
            # starts a new session then, which this connection or the next carries
            for _attempt in range(2):
                await r.connect()
                async with trio.open_nursery() as n:
                    n.start_soon(_ended, r, n.cancel_scope)
                    await _renewed(r, old, n.cancel_scope)
                if session(r) is not old and session(r).connected:
                    break
            assert session(r) is not old and session(r).connected
            await session(r).wait_main(MainState.RUNNING)  # the fresh main, attached
            st = await r.api.exec(VM, ["sh", "-c", "exit 4"])
        assert st.code == 4


async def _ended(r: Rig, done: trio.CancelScope) -> None:
    await r.ended.wait()
    done.cancel()


async def _renewed(r: Rig, old: VmSession, done: trio.CancelScope) -> None:
    while True:
        s = session(r)
        if s is not old and s.connected:
            done.cancel()
            return
        await s.changed.wait()


async def test_sessions_beyond_max_vms_are_refused_alone(tmp_path: Path) -> None:
    from common.proto.link.header import OriginHeader
    from vspc.config import SessionsConfig
    from vspc.sessions.service import SessionsDisabled, SessionService

    service = SessionService(SessionsConfig(max_vms=2), None)
    async with trio.open_nursery() as n:
        await n.start(service.run)
        await service.prepare("a")
        await service.prepare("b")
        await service.prepare("a")  # known: no new session
        with pytest.raises(SessionsDisabled, match="max-vms"):
            await service.prepare("c")
        # a relayed stream for one more VM costs only that stream: closed, logged
        x, y = trio.socket.socketpair()
        header = OriginHeader(host="esx1", vm="c", kind="pipe", label="session")
        with trio.fail_after(5):
            await service.serve_stream(trio.SocketStream(x), header)
            assert await trio.SocketStream(y).receive_some(10) == b""
        assert service.find("c") is None and service.find("a") is not None
        n.cancel_scope.cancel()
