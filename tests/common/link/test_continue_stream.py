"""A resumable stream whose acceptor went away (a restarted relay): acknowledged only
what its application handed on, so the opener continues it in a new session from
there, numbered on, and the new acceptor learns where it starts."""

from __future__ import annotations

import trio
import trio.testing

from common.link.peering import LinkServer, open_session_table
from common.link.peerlink import LinkConfig
from common.link.resumable import ResumableStream
from common.link.route import Route, Router
from common.link.sessions import Accepted
from tests.common.link.link_harness import pattern, small_config
from tests.support.waiting import wait_until


async def serve(
    cfg: LinkConfig,
    got: trio.MemorySendChannel[Accepted],
    *,
    task_status: trio.TaskStatus[tuple[int, trio.CancelScope]],
) -> None:
    """An acceptor (a relay that ends sessions) until its scope is cancelled."""
    with trio.CancelScope() as scope:
        async with open_session_table(cfg) as table, trio.open_nursery() as n:
            server = LinkServer(table, tls_files=None, config=cfg)
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            await n.start(server.serve, listeners)
            task_status.started((listeners[0].socket.getsockname()[1], scope))
            async for acc in table:
                await got.send(acc)


async def read_until(st: ResumableStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await st.receive_some()
        assert data
        buf += data
    return bytes(buf)


async def test_acceptor_restart_continues_from_what_was_handed_on() -> None:
    cfg = small_config()
    data = pattern(300_000)
    send, recv = trio.open_memory_channel[Accepted](4)
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            port1, scope1 = await n.start(serve, cfg, send)
            router = Router(Route(f"tcp:127.0.0.1:{port1}", tls=False), n, config=cfg)
            st = await router.open_stream(b"hdr")
            await st.send_all(data[:100_000])
            first = (await recv.receive()).stream
            assert first.continues is None
            held = await read_until(first, 100_000)  # its last piece taken, not handed on
            await trio.testing.wait_all_tasks_blocked()
            assert st.session.acked < 100_000
            more: list[bytes] = []
            taken = trio.Event()

            async def take_more() -> None:
                more.append(bytes(await first.receive_some()))  # hands ``held`` on
                taken.set()

            n.start_soon(take_more)
            # handed on: acknowledged (over real TCP)
            await wait_until(lambda: st.session.acked >= 100_000, 30, "the held piece acked")
            await st.send_all(data[100_000:120_000])
            await taken.wait()  # ``more`` is taken, not handed on, when the acceptor dies
            old_id = st.session_id
            scope1.cancel()  # the relay that ended the session goes away with it
            port2, _scope2 = await n.start(serve, cfg, send)
            router.set_route(Route(f"tcp:127.0.0.1:{port2}", tls=False))
            await st.send_all(data[120_000:])
            second = (await recv.receive()).stream
            assert second.continues == (100_000, 0)  # (its first byte, the opener's received)
            assert st.session_id != old_id and second.header == b"hdr"
            rest = await read_until(second, len(data) - 100_000)
            assert held + rest == data
            assert rest.startswith(more[0])  # sent again: it was never acknowledged
            await second.send_all(b"back")
            assert await st.receive_some() == b"back"
            n.cancel_scope.cancel()
