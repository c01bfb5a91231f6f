"""Console log writes that fail: held and retried (disk full), or dropped as recorded gaps.

The disk is simulated at the one place bytes reach it (``RotatingFile._write_all``):
it takes ``free`` more bytes, then fails with ``err``, the way a full tmpfs or a
dying disk does (a partial write, then the error). The kernel-level version of
the disk-full case is in tests/fault/test_console_faults.py.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.waiting import wait_until
from vic.lab.esx_sim import EsxConnection, SimVM
from vspc.console.gaps import Gap, skip
from vspc.console.logfile import RotatingFile, file_stem
from vspc.core.identity import PortKey

from .conftest import start_vspc
from .test_console_support import KEY, make_config, short_dir, start

__all__ = ["short_dir"]

_dirs = itertools.count()


class Disk:
    """``free``: bytes the disk still takes (None: no limit); then it fails with ``err``."""

    def __init__(self) -> None:
        self.free: int | None = None
        self.err = errno.ENOSPC

    def set(self, free: int | None, err: int = errno.ENOSPC) -> None:
        self.free, self.err = free, err


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    d = Disk()
    write_all = RotatingFile._write_all

    def faulty(f: RotatingFile, mv: memoryview) -> None:
        if d.free is None:
            return write_all(f, mv)
        n = min(len(mv), d.free)
        if n:
            write_all(f, mv[:n])
            d.free -= n
        if n < len(mv):
            raise OSError(d.err, os.strerror(d.err))
        return None

    writev_all = RotatingFile._writev_all

    def faulty_v(f: RotatingFile, views: list[memoryview]) -> None:
        if d.free is None:
            return writev_all(f, views)
        for mv in views:
            faulty(f, mv)
        return None

    monkeypatch.setattr(RotatingFile, "_write_all", faulty)
    monkeypatch.setattr(RotatingFile, "_writev_all", faulty_v)
    yield d


def gaps_in(events_file: Path) -> list[dict[str, object]]:
    if not events_file.exists():
        return []
    lines = events_file.read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "gap"]


def check_accounting(file: bytes, gaps: list[dict[str, object]], data: bytes) -> None:
    """``file`` is ``data`` with exactly the recorded holes cut out, at their offsets."""
    at_file = at_data = 0
    for g in gaps:
        offset, length = g["offset"], g["length"]
        assert isinstance(offset, int) and isinstance(length, int) and length > 0
        n = offset - at_file
        assert n >= 0
        assert file[at_file:offset] == data[at_data : at_data + n]
        at_file, at_data = offset, at_data + n + length
    assert file[at_file:] == data[at_data:]
    assert len(file) + sum(int(g["length"]) for g in gaps) == len(data)  # type: ignore[call-overload]


FAULTS = st.one_of(
    st.just(("ok", 0)),
    st.tuples(st.just("full"), st.integers(0, 300)),
    st.tuples(st.just("broken"), st.integers(0, 300)),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.tuples(st.integers(1, 400), FAULTS), min_size=1, max_size=12))
def test_every_byte_is_in_the_file_or_in_a_recorded_gap(
    short_dir: Path, disk: Disk, steps: list[tuple[int, tuple[str, int]]]
) -> None:
    d = short_dir / f"h{next(_dirs)}"
    d.mkdir()
    data = random.Random(len(steps)).randbytes(sum(n for n, _ in steps))

    async def main() -> None:
        cfg = make_config(d, log_max_bytes=1 << 30, log_hold_bytes=1 << 20)
        async with trio.open_nursery() as nursery:
            svc = await start(nursery, cfg)
            con = svc.open(KEY, "vm")
            pos = 0
            for n, (mode, free) in steps:
                disk.set(
                    None if mode == "ok" else free, errno.ENOSPC if mode == "full" else errno.EACCES
                )
                await con.from_vm(data[pos : pos + n])  # never waits: far below every limit
                pos += n
                await svc.writer.flush()
            disk.set(None)
            with trio.fail_after(10):
                while svc.writer.failing or svc.writer.total or not con._log.idle:
                    await svc.writer.flush()
            metrics = svc.metrics
            gaps = gaps_in(d / "logs" / f"{file_stem(KEY)}.events.jsonl")
            assert metrics.console_log_gap_bytes_total._value.get() == sum(
                int(g["length"])  # type: ignore[call-overload]
                for g in gaps
            )
            assert all(g["reason"] != "" and "Permission" in str(g["reason"]) for g in gaps)
            log_file = d / "logs" / f"{file_stem(KEY)}.log"
            check_accounting(log_file.read_bytes() if log_file.exists() else b"", gaps, data)
            nursery.cancel_scope.cancel()

    disk.set(None)
    trio.run(main)


async def test_full_disk_holds_pauses_the_vm_and_loses_nothing(
    short_dir: Path, disk: Disk, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vspc.console.log")
    cfg = make_config(short_dir, log_hold_bytes=3000, log_queue_bytes=2000)
    svc = await start(nursery, cfg)
    con = svc.open(KEY, "vm")
    data = random.Random(3).randbytes(20_000)
    await con.from_vm(data[:1000])
    await svc.writer.flush()
    disk.set(500)  # 500 bytes left, then ENOSPC
    done = trio.Event()

    async def vm() -> None:
        for i in range(1000, len(data), 700):
            await con.from_vm(data[i : i + 700])
        done.set()

    nursery.start_soon(vm)
    await wait_until(
        lambda: svc.metrics.console_log_write_errors_total._value.get() >= 3,
        10,
        "several failed writes retried",
        interval=0.05,
    )
    await trio.testing.wait_all_tasks_blocked()
    assert not done.is_set()  # the VM waits: the hold budget is spent
    assert svc.writer.total <= 3000 + 700
    disk.set(None)  # space again
    with trio.fail_after(10):
        await done.wait()
        while svc.writer.total or svc.writer.failing:
            await svc.writer.flush()
    log_file = short_dir / "logs" / f"{file_stem(KEY)}.log"
    assert log_file.read_bytes() == data
    assert svc.metrics.console_log_gaps_total._value.get() == 0
    msgs = [r.getMessage() for r in caplog.records if r.name == "vspc.console.log"]
    assert [m for m in msgs if "cannot be written" in m and "No space" in m] == msgs[:1]
    assert len([m for m in msgs if "written again" in m]) == 1
    assert len(msgs) == 2  # once per episode, not once per failed batch


async def test_a_broken_disk_drops_and_records_once_per_hole(
    short_dir: Path, disk: Disk, nursery: trio.Nursery
) -> None:
    svc = await start(nursery, make_config(short_dir))
    con = svc.open(KEY, "vm")
    await con.from_vm(b"a" * 100)
    await svc.writer.flush()
    disk.set(10, errno.EIO)
    for _ in range(5):
        await con.from_vm(b"b" * 100)
        await svc.writer.flush()
    assert svc.metrics.console_log_gap_bytes_total._value.get() == 490
    assert svc.metrics.console_log_gaps_total._value.get() == 1  # one hole, grown
    disk.set(None)
    await con.from_vm(b"c" * 100)
    with trio.fail_after(10):
        while not con._log.idle:
            await svc.writer.flush()
    gaps = gaps_in(short_dir / "logs" / f"{file_stem(KEY)}.events.jsonl")
    assert [(g["offset"], g["length"]) for g in gaps] == [(110, 490)]
    log_file = short_dir / "logs" / f"{file_stem(KEY)}.log"
    assert log_file.read_bytes() == b"a" * 100 + b"b" * 10 + b"c" * 100


@given(chunks=st.lists(st.binary(max_size=20), max_size=8), n=st.integers(0, 200))
def test_skip_drops_exactly_n_leading_bytes(chunks: list[bytes], n: int) -> None:
    assert b"".join(skip(chunks, n)) == b"".join(chunks)[n:]
    assert all(skip(chunks, n))  # no empty chunk left behind


def test_gap_fields() -> None:
    assert Gap(5, 7, "x").fields() == {"offset": 5, "length": 7, "reason": "x"}


async def test_full_disk_stops_reading_telnet_within_the_hold_budget(
    tmp_path: Path, disk: Disk, nursery: trio.Nursery
) -> None:
    console: dict[str, object] = {
        "log_hold_bytes": 100_000,
        "log_queue_bytes": 65536,
        "log_max_bytes": 1 << 30,
    }
    service = await start_vspc(tmp_path, nursery, console=console)
    vm = SimVM.random(random.Random(21))
    data = random.Random(22).randbytes(16_000_000)  # more than kernel buffers hold
    log_file = tmp_path / "logs" / f"{file_stem(PortKey(vm.canonical_uuid))}.log"
    esx = await EsxConnection.open(nursery, "127.0.0.1", service.esx_port or 0, vm=vm)
    await esx.send_console(data[:1000])
    await wait_until(lambda: log_file.exists() and log_file.stat().st_size == 1000)
    disk.set(0)  # full
    sent = trio.Event()

    async def vm_writes() -> None:
        await esx.send_console(data[1000:])
        sent.set()

    nursery.start_soon(vm_writes)
    writer = service.consoles.writer
    await wait_until(
        lambda: service.metrics.console_log_write_errors_total._value.get() >= 3,
        20,
        "several failed writes retried",
        interval=0.05,
    )
    await trio.testing.wait_all_tasks_blocked()
    assert not sent.is_set()
    backlog = sum(b.size for b in service._backlogs.values())
    # held (at most the budget, plus the one queue-full batch) + what one read brought in;
    # the connection is not read further (it was 4 MiB a port before)
    assert writer.total + backlog < 1_000_000, (writer.total, backlog)
    disk.set(None)
    with trio.fail_after(30):
        await sent.wait()
        await wait_until(lambda: log_file.stat().st_size == len(data), timeout=30)
    assert log_file.read_bytes() == data
    assert service.metrics.console_log_gaps_total._value.get() == 0
    await esx.aclose()
