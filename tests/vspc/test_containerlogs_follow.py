"""Following a container log: woken by appends, each line once, ends on close."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from vspc.containerlogs import (
    ContainerLogs,
    ContainerLogSettings,
    FollowLagged,
    LogLine,
    Stream,
    TooManyFollowers,
)

T0 = 1_796_000_000.0
VM = "web-1"
OUT, ERR = Stream.STDOUT, Stream.STDERR


@pytest.fixture
async def store(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[ContainerLogs]:
    s = ContainerLogs(ContainerLogSettings(tmp_path / "ctr", max_bytes=300, keep=3))
    nursery.start_soon(s.run)
    yield s


async def collect(
    store: ContainerLogs,
    out: list[LogLine],
    done: trio.Event,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    **kw: object,
) -> None:
    async with store.follow(VM, **kw) as lines:  # type: ignore[arg-type]
        task_status.started()
        async for line in lines:
            out.append(line)
    done.set()


async def test_follow_wakes_on_append_and_ends_on_close(
    store: ContainerLogs, nursery: trio.Nursery
) -> None:
    send, recv = trio.open_memory_channel[LogLine | None](100)

    async def follower(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with store.follow(VM) as lines:
            task_status.started()
            async for line in lines:
                await send.send(line)
        await send.send(None)  # the follow ended

    async def next_text() -> bytes | None:
        with trio.fail_after(5):
            line = await recv.receive()
        return None if line is None else line.text

    store.append(VM, OUT, b"before\n", T0)
    await nursery.start(follower)
    assert await next_text() == b"before"
    store.append(VM, ERR, b"one\ntw", T0 + 1)
    assert await next_text() == b"one"
    await trio.testing.wait_all_tasks_blocked()
    assert recv.statistics().current_buffer_used == 0  # "tw" is no line yet
    store.append(VM, ERR, b"o\n", T0 + 2)
    assert await next_text() == b"two"
    store.append(VM, OUT, b"last words", T0 + 3)
    store.close(VM, T0 + 4)
    with trio.fail_after(5):
        last = await recv.receive()
    assert last is not None and (last.text, last.partial) == (b"last words", True)
    assert await next_text() is None
    assert store._vms[VM].followers == set()


async def test_follow_with_tail_gives_each_line_once(
    store: ContainerLogs, nursery: trio.Nursery
) -> None:
    for i in range(20):  # some in rotated files, some only queued
        store.append(VM, OUT, b"l%02d\n" % i, T0 + i)
        if i == 14:
            await store.flush()
    got: list[LogLine] = []
    done = trio.Event()
    follow = partial(collect, tail=8, streams=frozenset({OUT}))
    await nursery.start(follow, store, got, done)
    for i in range(20, 25):
        store.append(VM, OUT, b"l%02d\n" % i, T0 + i)
        store.append(VM, ERR, b"err\n", T0 + i)  # not asked for
        await store.flush()
    store.close(VM, T0 + 30)
    with trio.fail_after(5):
        await done.wait()
    assert [x.text for x in got] == [b"l%02d" % i for i in range(12, 25)]


async def test_follow_of_an_ended_output_returns_what_was_logged(store: ContainerLogs) -> None:
    store.append(VM, OUT, b"a\nb\n", T0)
    store.close(VM, T0 + 1)
    with trio.fail_after(5):
        async with store.follow(VM, tail=1) as lines:
            assert [x.text async for x in lines] == [b"b"]


async def test_a_slow_follower_is_told_it_lagged(tmp_path: Path) -> None:
    store = ContainerLogs(ContainerLogSettings(tmp_path / "ctr", follower_bytes=1000))
    store.append(VM, OUT, b"start\n", T0)
    async with store.follow(VM) as lines:
        for i in range(100):
            store.append(VM, OUT, b"line %d\n" % i, T0 + i)
        assert lines.held <= 1000
        assert (await lines.__anext__()).text == b"start"  # logged before the follow began
        with pytest.raises(FollowLagged) as e:
            await lines.__anext__()
        kept = []
        store.close(VM, T0 + 200)
        async for line in lines:
            kept.append(line.text)
    assert e.value.skipped + len(kept) == 100
    assert kept[-1] == b"line 99"
    assert store.memory(VM) <= store.writer.settings.queue_bytes


async def test_followers_are_bounded(tmp_path: Path) -> None:
    store = ContainerLogs(ContainerLogSettings(tmp_path / "ctr", max_followers=2))
    store.append(VM, OUT, b"x\n", T0)
    async with store.follow(VM), store.follow(VM):
        with pytest.raises(TooManyFollowers):
            async with store.follow(VM):
                pass
    async with store.follow(VM):  # the others left: room again
        pass


async def test_output_that_starts_again_is_followed_again(store: ContainerLogs) -> None:
    store.append(VM, OUT, b"run 1\n", T0)
    store.close(VM, T0 + 1)
    store.append(VM, OUT, b"run 2\n", T0 + 2)  # the container started again
    async with store.follow(VM, tail=1) as lines:
        store.append(VM, ERR, b"more\n", T0 + 3)
        store.close(VM, T0 + 4)
        with trio.fail_after(5):
            assert [x.text async for x in lines] == [b"run 2", b"more"]
    assert [x.text for x in await store.read(VM)] == [b"run 1", b"run 2", b"more"]
    await store.flush()
    assert store.settings.dir is not None
    files = store.settings.dir.glob("web-1_container.events.jsonl*")  # (rotated too)
    events = "".join(p.read_text() for p in files)
    assert events.count("vm_connected") == 2 and events.count("vm_disconnected") == 2
