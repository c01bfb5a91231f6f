"""Container logs on a disk that fills up or fails: counted gaps, no crash.

The full disk is a real one: a 64 KiB tmpfs (needs root to mount; skipped with
the reason otherwise), grown afterwards with ``mount -o remount``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from vspc.containerlogs import ContainerLogs, ContainerLogSettings, Stream

T0 = 1_796_000_000.0
VM = "web-1"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", os.fspath(mnt)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", os.fspath(mnt)], check=False)


def events(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def test_a_full_disk_costs_counted_lines_only(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "vspc.console.log")
    s = ContainerLogSettings(
        small_disk / "ctr", max_bytes=16 * 1024, keep=8, hold_bytes=4096, queue_bytes=32 * 1024
    )
    store = ContainerLogs(s)
    n = 0
    while store.lines_lost(VM) == 0:  # fill the disk until lines are dropped
        assert n < 5000, "the disk never filled"
        for _ in range(20):
            store.append(VM, Stream.STDOUT, b"line %05d %s\n" % (n, b"x" * 40), T0 + n)
            n += 1
        await store.flush()
    assert store.writer.holding  # the writer holds what the disk refused
    metrics = store.writer.metrics
    assert metrics.console_log_gap_bytes_total._value.get() > 0
    assert metrics.console_log_gaps_total._value.get() >= 1
    # lines still reach a follower, and reads still answer
    async with store.follow(VM, tail=1) as lines:
        assert (await lines.__anext__()).text.startswith(b"line ")
    # room again: the held lines are written, then the gap is recorded
    r = await trio.run_process(["mount", "-o", "remount,size=4m", os.fspath(small_disk)])
    assert r.returncode == 0
    await store.flush()
    assert not store.writer.holding
    store.append(VM, Stream.STDOUT, b"after\n", T0 + n)
    store.close(VM, T0 + n + 1)
    await store.flush()
    got = await store.read(VM)
    assert got[-1].text == b"after"
    assert len(got) + store.lines_lost(VM) == n + 1  # every line written or counted
    gaps = [
        e
        for e in events(small_disk / "ctr" / "web-1_container.events.jsonl")
        if e["event"] == "gap"
    ]
    assert gaps and {g["reason"] for g in gaps} == {"disk full"}
    assert (
        sum(int(str(g["length"])) for g in gaps) == metrics.console_log_gap_bytes_total._value.get()
    )
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("container logs cannot be written") for m in msgs)
    assert any(m.startswith("container logs written again") for m in msgs)


async def test_a_broken_log_directory_does_not_crash(tmp_path: Path) -> None:
    broken = tmp_path / "not-a-dir"
    broken.write_bytes(b"a file where the directory should be")
    store = ContainerLogs(ContainerLogSettings(broken / "ctr"))
    store.append(VM, Stream.STDERR, b"lost\n", T0)
    await store.flush()
    assert store.writer.failing
    assert store.writer.metrics.console_log_gap_bytes_total._value.get() > 0
    assert await store.read(VM) == []  # nothing on disk; the queue was dropped as a gap
    async with store.follow(VM) as lines:  # following still works
        store.append(VM, Stream.STDERR, b"seen\n", T0 + 1)
        assert (await lines.__anext__()).text == b"seen"


async def test_a_full_queue_drops_whole_lines_as_one_counted_gap(tmp_path: Path) -> None:
    store = ContainerLogs(ContainerLogSettings(tmp_path / "ctr", queue_bytes=1000))
    chunk = b"".join(b"line %03d\n" % i for i in range(100))  # ~5 KB of records at once
    store.append(VM, Stream.STDOUT, chunk, T0)  # the writer is not running: no room left
    lost = store.lines_lost(VM)
    assert 0 < lost < 100
    assert store.memory(VM) <= 1000
    await store.flush()
    got = await store.read(VM)
    assert [x.text for x in got] == [b"line %03d" % i for i in range(100 - lost)]  # a prefix
    ev = events(tmp_path / "ctr" / "web-1_container.events.jsonl")
    [gap] = [e for e in ev if e["event"] == "gap"]
    assert gap["reason"] == "log queue full"
    assert gap["length"] == store.writer.metrics.console_log_gap_bytes_total._value.get()
