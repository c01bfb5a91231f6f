"""The container log store: tail, since, streams, rotation, long lines, memory."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from vspc.containerlogs import ContainerLogs, ContainerLogSettings, LogLine, Stream
from vspc.containerlogs import files as files_mod
from vspc.core.linelog import to_ns

T0 = 1_796_000_000.0
VM = "web-1"
OUT, ERR = Stream.STDOUT, Stream.STDERR


def settings(tmp_path: Path, **kw: Any) -> ContainerLogSettings:
    base: dict[str, Any] = {"dir": tmp_path / "ctr", "max_bytes": 400, "keep": 3}
    base.update(kw)
    return ContainerLogSettings(**base)


@pytest.fixture
async def store(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[ContainerLogs]:
    s = ContainerLogs(settings(tmp_path))
    nursery.start_soon(s.run)
    yield s


def texts(lines: list[LogLine]) -> list[bytes]:
    return [line.text for line in lines]


def write_lines(store: ContainerLogs, n: int, *, start: int = 0, vm: str = VM) -> None:
    for i in range(start, start + n):
        store.append(vm, OUT, b"line %03d\n" % i, T0 + i)


async def test_tail_reads_across_rotated_files(store: ContainerLogs, tmp_path: Path) -> None:
    write_lines(store, 40)  # 45 bytes a record: ~8 a file, 4 files kept
    await store.flush()
    names = sorted(p.name for p in (tmp_path / "ctr").glob("web-1_container.log*"))
    assert names == [f"web-1_container.log{s}" for s in ("", ".1", ".2", ".3")]
    for p in (tmp_path / "ctr").glob("*.log*"):
        assert p.stat().st_size <= 400  # rotated between lines, never past max_bytes
        assert p.read_bytes().endswith(b"\n")
    live = (tmp_path / "ctr" / "web-1_container.log").read_bytes().count(b"\n")
    got = await store.read(VM, tail=live + 5)
    assert texts(got) == [b"line %03d" % i for i in range(40 - live - 5, 40)]
    assert texts(await store.read(VM, tail=1)) == [b"line 039"]
    assert await store.read(VM, tail=0) == []
    everything = await store.read(VM)  # as far as retention reaches, oldest first
    assert texts(everything)[-1] == b"line 039" and len(everything) < 40
    assert texts(await store.read(VM, tail=1000)) == texts(everything)


async def test_since_is_a_time_across_files(store: ContainerLogs) -> None:
    write_lines(store, 30)
    await store.flush()
    got = await store.read(VM, since=T0 + 20)
    assert texts(got) == [b"line %03d" % i for i in range(20, 30)]
    assert [line.ns for line in got] == [to_ns(T0 + i) for i in range(20, 30)]
    got = await store.read(VM, since=T0 + 20, tail=3)
    assert texts(got) == [b"line 027", b"line 028", b"line 029"]
    assert await store.read(VM, since=T0 + 31) == []


async def test_reads_see_queued_lines_once(tmp_path: Path) -> None:
    store = ContainerLogs(settings(tmp_path))  # not running: nothing is written until flush
    write_lines(store, 10)
    await store.flush()
    write_lines(store, 5, start=10)  # queued, not in the files
    got = await store.read(VM)
    assert texts(got) == [b"line %03d" % i for i in range(15)]
    assert texts(await store.read(VM, tail=7)) == [b"line %03d" % i for i in range(8, 15)]
    assert texts(await store.read(VM, since=T0 + 12)) == [b"line %03d" % i for i in range(12, 15)]
    assert texts(await store.read(VM, since=T0 + 8)) == [b"line %03d" % i for i in range(8, 15)]


async def test_streams_apart_and_merged_in_time_order(store: ContainerLogs) -> None:
    store.append(VM, OUT, b"o1\no", T0 + 1)
    store.append(VM, ERR, b"e1\n", T0 + 2)
    store.append(VM, OUT, b"2\n", T0 + 3)  # finishes a line begun before e1: stamped at T0+3
    store.append(VM, ERR, b"e2\n", T0 + 2.5)  # a clock that went back: never out of order
    await store.flush()
    merged = await store.read(VM)
    assert [(x.stream, x.text) for x in merged] == [
        (OUT, b"o1"),
        (ERR, b"e1"),
        (OUT, b"o2"),
        (ERR, b"e2"),
    ]
    times = [x.ns for x in merged]
    assert times == sorted(times)
    assert texts(await store.read(VM, streams=frozenset({OUT}))) == [b"o1", b"o2"]
    assert texts(await store.read(VM, streams=frozenset({ERR}), tail=1)) == [b"e2"]


async def test_timestamps_on_and_off(store: ContainerLogs) -> None:
    store.append(VM, OUT, b"hello\n", 0.25)
    [line] = await store.read(VM)
    assert line.render() == b"hello\n"
    assert line.render(timestamps=True) == b"1970-01-01T00:00:00.250000000Z hello\n"


async def test_long_lines_are_split_and_flagged(tmp_path: Path, nursery: trio.Nursery) -> None:
    store = ContainerLogs(settings(tmp_path, max_bytes=1 << 20))
    nursery.start_soon(store.run)
    line = bytes(range(32, 127)) * 500  # 47,500 bytes, no newline inside
    for i in range(0, len(line), 1000):
        store.append(VM, OUT, line[i : i + 1000], T0)
        assert store.memory(VM) <= 16 * 1024 + store.writer.settings.queue_bytes
    store.append(VM, OUT, b"\nshort\nunfinished", T0)
    store.close(VM, T0 + 1)
    got = await store.read(VM)
    assert [(len(x.text), x.partial) for x in got] == [
        (16384, True),
        (16384, True),
        (47500 - 32768, False),
        (5, False),
        (10, True),  # the end of the output without a newline
    ]
    assert b"".join(x.render() for x in got) == line + b"\nshort\nunfinished"


async def test_tail_does_not_read_whole_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ContainerLogs(settings(tmp_path, max_bytes=8 << 20))
    for i in range(0, 100_000, 1000):  # ~5 MB in one file
        store.append(VM, OUT, b"".join(b"row %06d\n" % j for j in range(i, i + 1000)), T0 + i)
        await store.flush()
    assert store.lines_lost(VM) == 0
    read = 0
    real_open = builtins.open

    class Counting:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def close(self) -> None:
            self.f.close()

        def seek(self, *a: int) -> int:
            return int(self.f.seek(*a))

        def read(self, n: int) -> bytes:
            nonlocal read
            data: bytes = self.f.read(n)
            read += len(data)
            return data

    monkeypatch.setattr(files_mod, "open", lambda p, m: Counting(real_open(p, m)), raising=False)
    got = await store.read(VM, tail=10)
    assert texts(got) == [b"row %06d" % j for j in range(99_990, 100_000)]
    assert read <= files_mod.BLOCK + 1024  # one block back, then the ten lines forwards


async def test_memory_and_retention_are_bounded(tmp_path: Path) -> None:
    store = ContainerLogs(settings(tmp_path, max_departed=3, retention_seconds=60))
    for n in range(10):
        store.append(f"vm-{n}", OUT, b"x\n", T0)
        store.close(f"vm-{n}", T0)
        await store.flush()
        store.forget_due(T0)
    assert len(store._vms) <= 4
    store.forget_due(T0 + 61)
    assert store._vms == {}
    # forgotten in memory only: the files still answer
    assert texts(await store.read("vm-0")) == [b"x"]
    store.append(VM, OUT, b"a" * 100_000, T0)  # no newline: only max_line held
    assert store.memory(VM) <= 16 * 1024 + store.writer.settings.queue_bytes


async def test_bad_vm_names_are_refused(store: ContainerLogs) -> None:
    with pytest.raises(ValueError):
        store.append("../etc", OUT, b"x\n", T0)
    with pytest.raises(ValueError):
        await store.read("a/b")


async def test_a_read_is_paged_and_undisturbed_by_rotation(store: ContainerLogs) -> None:
    write_lines(store, 20)
    await store.flush()
    want = await store.read(VM)
    async with store.lines(VM) as lines:
        write_lines(store, 60, start=20)  # rotates every file of the read away
        await store.flush()
        got = [line async for line in lines]
    assert got == want and texts(got)[-1] == b"line 019"


async def test_reading_everything_holds_a_page(tmp_path: Path) -> None:
    store = ContainerLogs(settings(tmp_path, max_bytes=1 << 20, keep=8))
    for i in range(0, 50_000, 1000):
        store.append(VM, OUT, b"".join(b"row %06d\n" % j for j in range(i, i + 1000)), T0 + i)
        await store.flush()
    n = held = 0
    async with store.lines(VM, streams=frozenset({OUT})) as lines:
        async for line in lines:
            assert line.text == b"row %06d" % n
            n += 1
            held = max(held, len(lines._first))
    assert n == 50_000
    assert held <= files_mod.PAGE // 40  # records are 51 bytes: a page, not the files
