"""A client that stops reading is dropped; the VM and the other clients carry on."""

from __future__ import annotations

import random
from pathlib import Path

import trio
import trio.testing

from vspc.console import Console
from vspc.console.clientqueue import notice

from .test_console_support import (
    KEY,
    attach_client,
    make_config,
    read_exactly,
    read_to_eof,
    short_dir,
    start,
)

__all__ = ["short_dir"]

QUEUE = 64 * 1024
RING = 16 * 1024
TOTAL = 4 * 1024 * 1024
CHUNK = 32 * 1024


async def test_stalled_client_is_dropped_and_nothing_else_stalls(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    cfg = make_config(
        short_dir,
        ring_bytes=RING,
        client_queue_bytes=QUEUE,
        log_queue_bytes=256 * 1024,
        log_queue_total_bytes=256 * 1024,
        drop_notice_timeout=60.0,
    )
    svc = await start(nursery, cfg)
    con = svc.open(KEY, "vm")
    data = random.Random(3).randbytes(TOTAL)
    await con.from_vm(data[:RING])  # something to replay

    slow, slow_status, slow_buf = await attach_client(svc, "vm", mode="ro", replay=RING)
    fast, fast_status, fast_buf = await attach_client(svc, "vm", mode="ro", replay=RING)
    assert slow_status["replay"] == fast_status["replay"] == RING
    assert svc.metrics.console_clients._value.get() == 2

    fast_got = bytearray()
    fast_done = trio.Event()

    async def fast_reader() -> None:
        fast_got.extend(await read_exactly(fast, fast_buf, TOTAL))
        fast_done.set()

    nursery.start_soon(fast_reader)

    with trio.fail_after(60):  # the VM side finishes although `slow` never reads
        worst_queue, worst_log = await feed_live(con, data)
        await fast_done.wait()

    assert bytes(fast_got) == data  # replay + live, every byte, in order
    assert worst_queue <= QUEUE  # bounded per client
    assert worst_log <= 256 * 1024  # bounded log queue
    assert svc.metrics.slow_clients_dropped_total._value.get() == 1
    assert svc.metrics.console_clients._value.get() == 1
    assert [c.clients for c in svc.list()] == [1]

    # The stalled client now reads: a clean prefix of the stream, then the notice, then EOF.
    with trio.fail_after(30):
        got = await read_to_eof(slow, slow_buf)
    note = notice(f"disconnected: client fell more than {QUEUE} bytes behind")
    assert got.endswith(note)
    prefix = got[: -len(note)]
    assert len(prefix) < TOTAL // 2
    assert prefix == data[: len(prefix)]

    await svc.writer.flush()
    assert (short_dir / "logs" / f"{KEY.uuid}_serial0.log").read_bytes() == data
    await fast.aclose()


async def feed_live(con: Console, data: bytes) -> tuple[int, int]:
    """The VM sends ``data`` after the first RING bytes, in CHUNKs; the most any
    client had queued beyond its credit, and the most the log queue held."""
    worst_queue = 0
    worst_log = 0
    for pos in range(RING, len(data), CHUNK):
        await con.from_vm(data[pos : pos + CHUNK])
        for c in con.clients:
            worst_queue = max(worst_queue, c.queued - c.credit)
        worst_log = max(worst_log, con.log_queued)
        # let the fast client and the log writer run: no sleep, just scheduling
        await trio.testing.wait_all_tasks_blocked()
    return worst_queue, worst_log


async def test_vm_never_waits_without_logs(short_dir: Path, nursery: trio.Nursery) -> None:
    """No log dir, one stalled client: from_vm completes without a single checkpoint."""
    svc = await start(nursery, make_config(short_dir, log_dir=None, client_queue_bytes=QUEUE))
    con = svc.open(KEY, "vm")
    stalled, _, _ = await attach_client(svc, "vm")
    await trio.testing.wait_all_tasks_blocked()
    block = b"x" * CHUNK
    with trio.CancelScope() as cs:
        cs.cancel()  # any checkpoint inside from_vm would raise Cancelled
        for _ in range(TOTAL // CHUNK):
            await con.from_vm(block)
    assert not cs.cancelled_caught
    assert svc.metrics.slow_clients_dropped_total._value.get() == 1
    assert con.info().bytes == TOTAL
    await stalled.aclose()
