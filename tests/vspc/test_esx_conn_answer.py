"""vMotion answers from a connection's own reader: written at once when nothing
else is being written, else queued ahead of console data (never interleaved)."""

from __future__ import annotations

import trio
import trio.testing

from vspc.esx_conn import EsxConnection


async def _read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        assert chunk
        buf += chunk
    return buf


async def test_answer_written_by_the_caller_when_idle() -> None:
    ours, esx = trio.testing.lockstep_stream_pair()
    conn = EsxConnection(ours, "test", lambda direction, uri: True)
    got: list[bytes] = []

    async def esx_reads() -> None:
        got.append(await _read_exactly(esx, 5))

    async with trio.open_nursery() as n:
        conn._nursery = n  # as run() sets it
        n.start_soon(esx_reads)
        await conn.send_control_now(b"GOAHD")  # returns once the peer took it
        assert not conn._writing
    assert got == [b"GOAHD"]


async def test_answer_queued_ahead_of_console_data_while_writing() -> None:
    ours, esx = trio.testing.memory_stream_pair()
    conn = EsxConnection(ours, "test", lambda direction, uri: True)
    async with trio.open_nursery() as n:
        conn._nursery = n
        conn.send_console(b"a" * 40000)  # a writer task is started for it
        conn.send_console(b"b" * 10)
        await conn.send_control_now(b"GOAHD")  # queued: the writer sends it next
        data = await _read_exactly(esx, 40000 + 10 + 5)
    first = data.index(b"GOAHD")
    assert data[:first] == b"a" * first and first in (0, 16 * 1024, 32 * 1024)
    assert data.replace(b"GOAHD", b"") == b"a" * 40000 + b"b" * 10
