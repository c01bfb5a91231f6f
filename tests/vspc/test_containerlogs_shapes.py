"""The logs() call in kubelet's and docker's shapes; reads racing appends; restarts."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio.testing

from vspc.console.history import MARKER
from vspc.containerlogs import ContainerLogs, ContainerLogSettings, Stream
from vspc.containerlogs.shapes import Shape, logs

T = TypeVar("T")
T0 = 1_796_000_000.0
VM = "web-1"
OUT, ERR = Stream.STDOUT, Stream.STDERR


async def gather(store: ContainerLogs, **kw: Any) -> list[bytes]:
    async with aclosing(logs(store, VM, **kw)) as chunks:
        return [c async for c in chunks]


async def test_text_shape_with_and_without_timestamps(tmp_path: Path) -> None:
    store = ContainerLogs(ContainerLogSettings(tmp_path / "ctr"))
    store.append(VM, OUT, b"a\n", 1.5)
    store.append(VM, ERR, b"b\nc", 2.0)
    store.close(VM, 3.0)
    assert b"".join(await gather(store)) == b"a\nb\nc"
    assert await gather(store, tail=1, timestamps=True) == [b"1970-01-01T00:00:03.000000000Z c"]
    stamped = await gather(store, timestamps=True, streams=frozenset({ERR}))
    assert stamped == [b"1970-01-01T00:00:02.000000000Z b\n", b"1970-01-01T00:00:03.000000000Z c"]


async def test_docker_shape_is_multiplexed(tmp_path: Path) -> None:
    store = ContainerLogs(ContainerLogSettings(tmp_path / "ctr"))
    store.append(VM, OUT, b"out\n", T0)
    store.append(VM, ERR, b"err\n", T0 + 1)
    frames = b"".join(await gather(store, shape=Shape.DOCKER))
    got = []
    while frames:
        kind, size = struct.unpack(">BxxxI", frames[:8])
        got.append((kind, frames[8 : 8 + size]))
        frames = frames[8 + size :]
    assert got == [(1, b"out\n"), (2, b"err\n")]


async def test_follow_shape_ends_with_the_output(tmp_path: Path, nursery: trio.Nursery) -> None:
    store = ContainerLogs(ContainerLogSettings(tmp_path / "ctr"))
    nursery.start_soon(store.run)
    store.append(VM, OUT, b"first\n", T0)
    got: list[bytes] = []
    done = trio.Event()

    async def reader() -> None:
        got.extend(await gather(store, follow=True, tail=5))
        done.set()

    nursery.start_soon(reader)
    await trio.testing.wait_all_tasks_blocked()
    store.append(VM, OUT, b"second\n", T0 + 1)
    store.close(VM, T0 + 2)
    with trio.fail_after(5):
        await done.wait()
    assert got == [b"first\n", b"second\n"]


async def test_lines_appended_while_the_files_are_read_come_once(tmp_path: Path) -> None:
    """An append that lands while a follow reads the files (the log thread is
    busy) is neither lost nor given twice."""
    store = ContainerLogs(ContainerLogSettings(tmp_path / "ctr", max_bytes=200, keep=9))
    for i in range(10):
        store.append(VM, OUT, b"old %d\n" % i, T0 + i)
    await store.flush()
    store.append(VM, OUT, b"queued\n", T0 + 10)
    in_thread = store.writer.in_thread

    async def racing(fn: Callable[..., T], *args: object) -> T:
        store.append(VM, OUT, b"during\n", T0 + 11)  # arrives mid-read
        result = await in_thread(fn, *args)
        store.append(VM, OUT, b"after\n", T0 + 12)
        return result

    store.writer.in_thread = racing  # type: ignore[method-assign]
    async with store.follow(VM) as lines:
        store.close(VM, T0 + 13)
        got = [x.text async for x in lines]
    assert got == [b"old %d" % i for i in range(10)] + [b"queued", b"during", b"after"]


async def test_a_killed_run_leaves_a_restart_gap(tmp_path: Path, nursery: trio.Nursery) -> None:
    log_dir = tmp_path / "ctr"
    first = ContainerLogs(ContainerLogSettings(log_dir))
    first.append(VM, OUT, b"before the kill\n", T0)
    await first.flush()
    (log_dir / MARKER).write_text("1\n")  # as a run that never stopped leaves it
    second = ContainerLogs(ContainerLogSettings(log_dir))
    nursery.start_soon(second.run)
    await trio.testing.wait_all_tasks_blocked()  # run() holds the lock while it marks
    with trio.fail_after(5):
        await second.flush()  # ... and this waits for it
    lines = (log_dir / "web-1_container.events.jsonl").read_text().splitlines()
    kinds = [json.loads(x)["event"] for x in lines]
    assert kinds == ["vm_connected", "gap", "vm_disconnected"]
    assert json.loads(lines[1])["reason"] == "restart"
    assert [x.text for x in await second.read(VM)] == [b"before the kill"]
