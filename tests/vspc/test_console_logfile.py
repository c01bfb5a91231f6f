from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vspc.console.eventlog import format_event
from vspc.console.logfile import RotatingFile, rotated
from vspc.core.identity import IdentityError, PortKey

from .test_console_support import KEY, make_config, short_dir, start

__all__ = ["short_dir"]

_dirs = itertools.count()


def retained(path: Path, keep: int) -> bytes:
    parts = [rotated(path, i) for i in range(keep, 0, -1)] + [path]
    return b"".join(p.read_bytes() for p in parts if p.exists())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(0, 300), max_size=25),
    max_bytes=st.integers(1, 200),
    keep=st.integers(0, 4),
)
def test_rotation_is_byte_exact(
    tmp_path: Path, sizes: list[int], max_bytes: int, keep: int
) -> None:
    d = tmp_path / f"r{next(_dirs)}"
    path = d / "x.log"
    f = RotatingFile(path)
    data = random.Random(len(sizes)).randbytes(sum(sizes))
    pos = 0
    for n in sizes:
        f.write(data[pos : pos + n], max_bytes, keep)
        pos += n
    f.close()
    files = sorted(p.name for p in d.iterdir()) if d.exists() else []
    assert len(files) <= keep + 1
    for i in range(1, keep + 1):
        p = rotated(path, i)
        if p.exists():
            assert p.stat().st_size == max_bytes  # cut at exactly max_bytes
    got = retained(path, keep)
    assert len(got) <= keep * max_bytes + max_bytes
    assert got == data[len(data) - len(got) :]
    # nothing lost that retention should have kept
    if data:
        live = path.stat().st_size if path.exists() else 0
        assert len(got) == min(len(data), live + keep * max_bytes)


def test_rotation_survives_reopen_and_shrinking_retention(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    data = bytes(range(256)) * 10
    f = RotatingFile(path)
    f.write(data[:1000], 100, 5)
    f.close()
    g = RotatingFile(path)  # a restart: size comes from the file
    g.write(data[1000:], 100, 2)
    g.close()
    assert not rotated(path, 3).exists() and not rotated(path, 4).exists()
    assert retained(path, 2) == data[-260:]  # .2 and .1 full, 60 bytes live


def test_event_lines_are_json_with_time() -> None:
    line = format_event("vmotion_begin", {"seq": b"\xff\x01", "host": "esx1"}, 1_700_000_000.25)
    obj = json.loads(line)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert obj == {
        "time": "2023-11-14T22:13:20.250000Z",
        "ts": 1700000000.25,
        "event": "vmotion_begin",
        "seq": "ff01",
        "host": "esx1",
    }


async def test_service_logs_bytes_and_events(short_dir: Path, nursery: trio.Nursery) -> None:
    cfg = make_config(short_dir, log_max_bytes=1000, log_keep=3, log_queue_bytes=700)
    svc = await start(nursery, cfg)
    con = svc.open(KEY, "vm-one")
    con.event("connect", host="esx-a")
    data = random.Random(1).randbytes(2500)
    for i in range(0, len(data), 333):
        await con.from_vm(data[i : i + 333])
        assert con.log_queued <= 700
    con.event("disconnect", host="esx-a")
    await svc.writer.flush()
    log_path = short_dir / "logs" / f"{KEY.uuid}_serial0.log"
    assert retained(log_path, 3) == data
    events = [
        json.loads(x)
        for x in (short_dir / "logs" / f"{KEY.uuid}_serial0.events.jsonl").read_text().splitlines()
    ]
    assert [e["event"] for e in events] == ["connect", "disconnect"]
    assert all("time" in e for e in events)


async def test_from_vm_waits_for_disk_and_never_drops(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    cfg = make_config(short_dir, log_queue_bytes=1000, log_queue_total_bytes=1000)
    svc = await start(nursery, cfg)
    con = svc.open(KEY, "vm")
    data = random.Random(2).randbytes(5000)
    done = trio.Event()

    async def vm() -> None:
        await con.from_vm(data)
        done.set()

    async with svc.writer._lock:  # the disk is "stuck"
        nursery.start_soon(vm)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # backpressure: waiting, not dropping
        assert con.log_queued <= 1000
    with trio.fail_after(10):
        await done.wait()
    await svc.writer.flush()
    assert (short_dir / "logs" / f"{KEY.uuid}_serial0.log").read_bytes() == data


async def test_file_names_come_from_the_key_and_never_collide(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    """A label cannot hold a path (PortKey refuses it); ``_`` in a label is escaped so
    that ``a_b``/``c`` and ``a``/``b_c`` keep separate files."""
    with pytest.raises(IdentityError):
        PortKey(KEY.uuid, "../x/y")
    svc = await start(nursery, make_config(short_dir))
    await svc.open(PortKey("a_b", "c"), "one").from_vm(b"one")
    await svc.open(PortKey("a", "b_c"), "two").from_vm(b"two")
    await svc.writer.flush()
    logs = short_dir / "logs"
    names = sorted(p.name for p in logs.iterdir())
    assert names == [
        ".vspc-running",
        "a_b%5Fc.log",
        "a_b%5Fc.meta.json",
        "a_b_c.log",
        "a_b_c.meta.json",
    ]
    assert (logs / "a_b_c.log").read_bytes() == b"one"
    assert (logs / "a_b%5Fc.log").read_bytes() == b"two"


async def test_a_broken_log_dir_does_not_stall_the_vm(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    blocker = short_dir / "logs"
    blocker.write_text("a file where the log directory should be")
    cfg = make_config(short_dir, log_queue_bytes=4096, log_queue_total_bytes=4096)
    svc = await start(nursery, cfg)
    con = svc.open(KEY, "vm")
    with trio.fail_after(30):
        for _ in range(64):
            await con.from_vm(b"y" * 1024)
        await svc.writer.flush()
    # not a full disk: waiting would not help, so the bytes are dropped and counted
    assert svc.writer.failing
    assert con.info().bytes == 64 * 1024
    assert svc.writer.total == 0
    assert svc.metrics.console_log_gap_bytes_total._value.get() == 64 * 1024
    assert svc.metrics.console_log_gaps_total._value.get() == 1  # one hole, at offset 0
    assert [(g.offset, g.length) for g in con._log.gaps] == [(0, 64 * 1024)]
