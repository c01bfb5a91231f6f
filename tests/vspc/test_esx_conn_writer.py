"""A connection's writer runs beside its reader in the nursery that runs the reader
(no nursery per connection): closing flushes what is queued, and a failed write
ends that connection only."""

from __future__ import annotations

import trio
import trio.testing

from vspc.esx_conn import EsxConnection
from vspc.metrics import VspcMetrics


class _Owner:
    def __init__(self) -> None:
        self.metrics = VspcMetrics.create()
        self.closed = trio.Event()

    async def on_session_event(self, conn: EsxConnection, ev: object) -> None:
        pass

    async def probe_answered(self, conn: EsxConnection) -> None:
        pass

    def may_read(self, conn: EsxConnection) -> bool:
        return True

    async def connection_closed(self, conn: EsxConnection) -> None:
        self.closed.set()


async def _reset() -> None:
    raise trio.BrokenResourceError("peer reset")


async def test_close_flushes_queued_console_data_then_closes() -> None:
    ours, esx = trio.testing.memory_stream_pair()
    conn = EsxConnection(ours, "test", lambda direction, uri: True)
    owner = _Owner()
    got = bytearray()

    async def esx_reads() -> None:
        while chunk := await esx.receive_some(65536):
            got.extend(chunk)

    async with trio.open_nursery() as n:
        n.start_soon(esx_reads)
        n.start_soon(conn.run, owner)
        await trio.testing.wait_all_tasks_blocked()
        conn.send_console(b"x" * 100_000)  # several chunks: a writer task runs
        conn.close_soon("test")
        await owner.closed.wait()
    assert got.endswith(b"x" * 100_000)  # after the negotiation the reader started with
    assert conn.close_reason == "test"


async def test_failed_write_ends_its_connection_only() -> None:
    send = trio.testing.MemorySendStream(send_all_hook=_reset)
    receive = trio.testing.MemoryReceiveStream()
    ours = trio.StapledStream(send, receive)
    conn = EsxConnection(ours, "test", lambda direction, uri: True)
    owner = _Owner()
    survivor = trio.Event()
    async with trio.open_nursery() as n:  # as the listener's handler nursery
        n.start_soon(conn.run, owner)  # its first write (negotiation) fails
        with trio.fail_after(5):
            await owner.closed.wait()
        survivor.set()  # the nursery (every other connection) goes on
    assert survivor.is_set() and conn.closing
    assert not conn._writing
