"""Console logs under faults, against a real ``vic vspc`` started from TOML.

* The log disk fills up mid-stream and is freed again: every byte the VM sent
  is in the log file, or in a recorded gap (here: back-pressure, so no gap).
* The vSPC is killed (SIGKILL) while a VM streams over Telnet and restarted:
  the console's event log gets an explicit, counted ``restart`` gap and the
  console carries on in the same log file.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from common.proto.link.header import OriginHeader, encode_header
from tests.support.daemons import metric_sum
from tests.support.waiting import wait_until, wait_until_async
from tests.vspc.test_vspc_ops import HOST, VspcDaemon, daemon, scrape
from vic.lab.esx_sim import EsxConnection, SimVM
from vspc.console.logfile import file_stem
from vspc.core.identity import DEFAULT_LABEL, PortKey

LOG_WRITTEN_AGAIN = "console logs written again"
LOG_CANNOT_WRITE = "console logs cannot be written"


def config(tmp: Path, log_dir: Path, *, hold: int = 1 << 22) -> str:
    return f"""
log-level = "info"
[listen]
host = "{HOST}"
port = 0
[endpoint]
unix = "{tmp / "endpoint.sock"}"
[console]
socket = "{tmp / "console.sock"}"
log-dir = "{log_dir}"
log-hold-bytes = {hold}
log-queue-bytes = 65536
[metrics]
host = "{HOST}"
port = 0
"""


async def end(
    d: VspcDaemon, n: trio.Nursery, sig: int = signal.SIGTERM, timeout: float = 20.0
) -> None:
    """Signal the daemon, wait until it exits, then stop the test's own tasks."""
    d.kill(sig)
    await d.wait_exit(timeout)
    n.cancel_scope.cancel()


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- (a) disk full and recovered ------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the log directory needs root")
    mnt = tmp_path / "logs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(d: Path) -> Path:
    """Fill the file system of ``d`` to the last byte; the filler's path."""
    filler = d / "filler"
    with open(filler, "wb", buffering=0) as f:
        block = b"\0" * 65536
        while True:
            try:
                n = f.write(block)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                if len(block) == 1:
                    return filler
                block = block[: len(block) // 2]
                continue
            if n < len(block):
                block = block[: max(1, len(block) // 2)]


async def test_disk_full_then_freed_loses_no_byte(tmp_path: Path, small_tmpfs: Path) -> None:
    log_dir = small_tmpfs
    key = PortKey("vm-disk", "com1")
    log_file = log_dir / f"{file_stem(key)}.log"
    data = random.Random(7).randbytes(2_500_000)
    first = 100_000
    async with (
        daemon(tmp_path, config(tmp_path, log_dir, hold=200_000)) as d,
        trio.open_nursery() as n,
    ):
        await d.ready()
        vm = await trio.open_unix_socket(str(tmp_path / "endpoint.sock"))
        await vm.send_all(
            encode_header(OriginHeader(host="esx-a", vm="vm-disk", kind="tcp", label="com1"))
            + data[:first]
        )
        await wait_until(lambda: size(log_file) == first, 20, "the first bytes are logged")
        filler = fill(log_dir)
        sent = trio.Event()

        async def rest() -> None:
            await vm.send_all(data[first:])
            sent.set()

        n.start_soon(rest)

        async def failing() -> bool:
            return metric_sum(await scrape(d), "vspc_console_log_write_errors_total") >= 2

        await wait_until_async(failing, 20, "log writes fail and are retried")
        assert not sent.is_set()  # back-pressure: the VM's stream is no longer read
        assert size(log_file) < len(data)
        filler.unlink()  # the operator frees space
        with trio.fail_after(30):
            await sent.wait()
        await wait_until(lambda: size(log_file) == len(data), 20, "every byte reaches the log")
        assert log_file.read_bytes() == data
        samples = await scrape(d)
        assert metric_sum(samples, "vspc_console_log_gap_bytes_total") == 0
        assert metric_sum(samples, "vspc_console_log_gaps_total") == 0
        ev = events(log_dir / f"{file_stem(key)}.events.jsonl")
        assert not [e for e in ev if e["event"] == "gap"]
        await vm.aclose()
        await end(d, n)
    assert d.returncode == 0
    # said once when it started, once when it ended: not once per failed batch
    assert d.log().count(LOG_CANNOT_WRITE) == 1, d.log()[-3000:]
    assert d.log().count(LOG_WRITTEN_AGAIN) == 1
    assert not (log_dir / ".vspc-running").exists()  # a clean stop


# ---- (b) vSPC killed on the Telnet path -------------------------------------------


async def test_killed_vspc_marks_a_restart_gap_and_carries_on(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    toml = config(tmp_path, log_dir)
    vm = SimVM.random(random.Random(11), name="vm-kill")
    key = PortKey(vm.canonical_uuid, DEFAULT_LABEL)
    log_file = log_dir / f"{file_stem(key)}.log"
    events_file = log_dir / f"{file_stem(key)}.events.jsonl"
    before = random.Random(1).randbytes(50_000)
    after = random.Random(2).randbytes(30_000)

    def connected() -> bool:
        return size(events_file) > 0 and b'"vm_connected"' in events_file.read_bytes()

    async with daemon(tmp_path, toml) as d, trio.open_nursery() as n:
        await d.ready()
        esx = await EsxConnection.open(n, HOST, d.esx_port, vm=vm)
        await esx.send_console(before)
        await wait_until(
            lambda: size(log_file) == len(before) and connected(), 20, "logged and connected"
        )
        await end(d, n, signal.SIGKILL, 10)
    assert (log_dir / ".vspc-running").exists()  # no clean stop

    async with daemon(tmp_path, toml) as d, trio.open_nursery() as n:
        await d.ready()

        def gaps_marked() -> list[dict[str, object]]:
            if not events_file.exists():
                return []
            return [e for e in events(events_file) if e["event"] == "gap"]

        # (the event log is written off the event loop: READY may come first)
        await wait_until(lambda: bool(gaps_marked()), 20, "the restart gap marked")
        gaps = gaps_marked()
        assert len(gaps) == 1
        assert gaps[0]["reason"] == "restart"
        assert gaps[0]["offset"] == len(before)
        assert gaps[0]["length"] is None  # what ESX sent meanwhile cannot be known

        async def gap_counted() -> bool:  # (counted once the log thread's marking returned)
            return metric_sum(await scrape(d), "vspc_console_log_gaps_total") == 1

        await wait_until_async(gap_counted, 20, "the restart gap counted")
        esx = await EsxConnection.open(n, HOST, d.esx_port, vm=vm)
        await esx.send_console(after)
        await wait_until(
            lambda: size(log_file) == len(before) + len(after), 20, "the console carries on"
        )
        assert log_file.read_bytes() == before + after  # the same log, no byte twice
        await esx.aclose()
        await end(d, n)
    assert d.returncode == 0
    assert not (log_dir / ".vspc-running").exists()
    # one restart, one gap: a second start after a clean stop marks nothing
    assert len([e for e in events(events_file) if e["event"] == "gap"]) == 1
