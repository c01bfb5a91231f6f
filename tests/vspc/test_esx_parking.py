"""Idle ESX connections parked without a task (vspc.esx_parking), against the real
service over kernel TCP and the ESX simulator: they are read, answered and closed
by the watcher as a task would, and ``VIC_VSPC_PARK=0`` keeps a task per connection."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.support.waiting import wait_until
from vic.lab.esx_sim import EsxConnection, SimVM, migrate, random_seq
from vspc import esx_conn, esx_parking
from vspc.esx_conn import EsxConnection as VspcConn
from vspc.esx_parking import ENV
from vspc.service import VspcService

from .conftest import attach_console, read_exactly, start_vspc


def _tasks(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
    yield task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _tasks(child)


def reader_tasks() -> int:
    """Tasks now running an ESX connection's reader (EsxConnection.run)."""
    code = VspcConn.run.__code__
    root = trio.lowlevel.current_root_task()
    assert root is not None
    return sum(1 for t in _tasks(root) if getattr(t.coro, "cr_code", None) is code)


def esx_port(service: VspcService) -> int:
    assert service.esx_port is not None
    return service.esx_port


async def console_with_viewer(
    vspc: VspcService, nursery: trio.Nursery, vm: SimVM, first: bytes
) -> tuple[EsxConnection, trio.abc.Stream]:
    """``vm`` connected over ESX, ``first`` sent and seen by an attached viewer,
    and everything settled (the connection parked if it may)."""
    src = await EsxConnection.open(nursery, "127.0.0.1", esx_port(vspc), vm=vm)
    await src.send_console(first)
    viewer = await attach_console(vspc, vm.canonical_uuid)
    assert await read_exactly(viewer, len(first)) == first
    await trio.testing.wait_all_tasks_blocked()
    return src, viewer


async def test_idle_connection_has_no_task_and_moves_without_loss(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    vspc = await start_vspc(tmp_path, nursery)
    parking = vspc._parking
    assert parking is not None
    rng = random.Random(11)
    vm = SimVM.random(rng)
    with trio.fail_after(30):
        src, viewer = await console_with_viewer(vspc, nursery, vm, b"one-")
        assert len(parking) == 1 and reader_tasks() == 0
        # BEGIN read and answered by the watcher; the connection stays parked
        secret = await src.vmotion_begin(random_seq(rng, with_ff=True))
        assert secret
        await src.vmotion_abort()
        await src.send_console(b"two-")
        assert await read_exactly(viewer, 4) == b"two-"
        await trio.testing.wait_all_tasks_blocked()
        assert len(parking) == 1 and reader_tasks() == 0
        m = await migrate(src, "127.0.0.1", esx_port(vspc), nursery=nursery, rng=rng)
        await m.dest.send_console(b"three")
        assert await read_exactly(viewer, 5) == b"three"
        await src.aclose()  # the source's EOF: its task comes back to close it
        await wait_until(lambda: len(vspc._conns) == 1, what="the source closed")
        await trio.testing.wait_all_tasks_blocked()
        assert len(parking) == 1 and reader_tasks() == 0
    assert not src.violations and not m.dest.violations


async def test_closed_by_the_vspc_while_parked(tmp_path: Path, nursery: trio.Nursery) -> None:
    vspc = await start_vspc(tmp_path, nursery)
    parking = vspc._parking
    assert parking is not None
    vm = SimVM.random(random.Random(12))
    with trio.fail_after(30):
        await EsxConnection.open(nursery, "127.0.0.1", esx_port(vspc), vm=vm)
        await wait_until(lambda: len(parking) == 1, what="the connection parked")
        (conn,) = vspc._conns
        conn.close_soon("test")  # unparked to close: its task flushes and closes
        await wait_until(lambda: not vspc._conns, what="the connection closed")
        assert len(parking) == 0


async def test_parking_off_keeps_a_task_per_connection(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "0")
    vspc = await start_vspc(tmp_path, nursery)
    assert vspc._parking is None
    rng = random.Random(13)
    vm = SimVM.random(rng)
    with trio.fail_after(30):
        src, viewer = await console_with_viewer(vspc, nursery, vm, b"x")
        assert reader_tasks() == 1
        m = await migrate(src, "127.0.0.1", esx_port(vspc), nursery=nursery, rng=rng)
        await m.dest.send_console(b"y")
        assert await read_exactly(viewer, 1) == b"y"


async def test_bulk_writer_gets_its_task_back_then_parks(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    vspc = await start_vspc(tmp_path, nursery)
    parking = vspc._parking
    assert parking is not None
    vm = SimVM.random(random.Random(14))
    payload = bytes(range(256)) * 800  # 200 KiB, 0xFF included: full reads
    with trio.fail_after(30):
        src, viewer = await console_with_viewer(vspc, nursery, vm, b"<")
        assert len(parking) == 1
        async with trio.open_nursery() as n:
            n.start_soon(src.send_console, payload)
            assert await read_exactly(viewer, len(payload)) == payload
        for tail in (b">", b"."):  # two short reads in a row: parked again after them
            await src.send_console(tail)
            assert await read_exactly(viewer, 1) == tail
        await trio.testing.wait_all_tasks_blocked()
        assert len(parking) == 1 and reader_tasks() == 0


async def test_one_short_read_amid_bulk_keeps_the_task_two_park_it(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny read sizes, so that which reads are "bulk" does not hang on TCP's segments.
    monkeypatch.setattr(esx_parking, "READ_SIZE", 4)
    monkeypatch.setattr(esx_conn, "READ_SIZE", 4)
    monkeypatch.setattr(esx_conn, "READ_SIZE_BULK", 1024)
    vspc = await start_vspc(tmp_path, nursery)
    parking = vspc._parking
    assert parking is not None
    vm = SimVM.random(random.Random(15))
    with trio.fail_after(30):
        src, viewer = await console_with_viewer(vspc, nursery, vm, b"<<<<")
        await src.send_console(b"A" * 100)  # bulk: read with a task, not parked
        assert await read_exactly(viewer, 100) == b"A" * 100
        await trio.testing.wait_all_tasks_blocked()
        assert len(parking) == 0 and reader_tasks() == 1
        await src.send_console(b">")  # one short read: the task stays
        assert await read_exactly(viewer, 1) == b">"
        await trio.testing.wait_all_tasks_blocked()
        assert len(parking) == 0 and reader_tasks() == 1
        await src.send_console(b".")  # the second in a row: parked
        assert await read_exactly(viewer, 1) == b"."
        await trio.testing.wait_all_tasks_blocked()
        assert len(parking) == 1 and reader_tasks() == 0
