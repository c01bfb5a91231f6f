"""Issue 11, items 3, 14, 15: consoles and the operator's input.

A port's input always goes to the VM connection that is live now (a short or
overlapping second stream does not cut it); keys typed while the VM is away
are discarded with a notice, never delivered to its next connection; the
consoles of departed VMs are bounded in memory and, after a restart, listed
and replayed from the logs on disk.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.hostile.appliance import (
    VICTIM_HOST,
    RawVm,
    Vspc,
    honest_vm,
    open_esx,
    raw_vm,
    start_vspc,
)
from tests.relay.relayfix import pattern
from tests.support.daemons import ROOT, MiB, run_daemon
from tests.support.waiting import wait_until, wait_until_async

RSS_SLACK = 20 * MiB
ACCEPTED = "vspc_relayed_streams_total"
CHURN_BYTES = 64 << 10  # a departed VM with a full replay ring


async def cli_list(vspc: Vspc) -> list[dict[str, Any]]:
    """`vic console list --json`, the operator's own view."""
    sock = vspc.config["console"]["socket"]
    done = await trio.run_process(
        [sys.executable, "-m", "vic.cli", "console", "list", "--json", "--socket", sock],
        capture_stdout=True,
        capture_stderr=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    consoles: list[dict[str, Any]] = json.loads(done.stdout)
    return consoles


async def listed(vspc: Vspc, name: str) -> dict[str, Any] | None:
    return next(
        (c for c in await cli_list(vspc) if name in (c.get("uuid"), c.get("display"))), None
    )


def events(vspc: Vspc, stem_start: str) -> list[dict[str, Any]]:
    found = [p for p in vspc.log_dir.rglob("*.events.jsonl") if p.name.startswith(stem_start)]
    return [json.loads(ln) for p in found for ln in p.read_text().splitlines() if ln]


async def recorded(vspc: Vspc, stem_start: str, kind: str, count: int) -> None:
    """The console's event log has recorded ``count`` events of ``kind`` (the
    endpoint has taken a stream: "connect", or finished with it: "disconnect")."""
    await wait_until(
        lambda: sum(e.get("event") == kind for e in events(vspc, stem_start)) >= count,
        10,
        f"{count} {kind} event(s) for {stem_start}",
    )


async def typed_reaches(vspc: Vspc, vm: RawVm, text: bytes) -> None:
    client = await vspc.attach(vm.vm, "rw")
    async with client:
        await client.send_all(text)
        try:
            got = await vm.receive_exactly(len(text), timeout=10)
        except trio.TooSlowError:
            raise AssertionError(f"the operator's {text!r} never reached the live VM") from None
        assert got == text


# ---- item 3: a second stream for a connected VM


async def second_stream_then_one_ends(
    vspc: Vspc, vm: str, sizes: tuple[int, int], seed: int, *, ends: str
) -> RawVm:
    """A second relayed stream for ``vm`` while the first is live, each sending its
    size; then the ``ends`` one ("newer" or "older") closes. The one left."""
    older = await raw_vm(vspc, vm)
    await older.send(sizes[0])
    await recorded(vspc, vm, "connect", 1)
    newer = await raw_vm(vspc, vm, seed=seed)
    await newer.send(sizes[1])
    await recorded(vspc, vm, "connect", 2)
    gone, left = (newer, older) if ends == "newer" else (older, newer)
    await gone.stream.aclose()
    await recorded(vspc, vm, "disconnect", 1)
    return left


async def input_reaches_the_connected(vspc: Vspc, vm: str, live: RawVm, text: bytes) -> None:
    """What the operator types reaches ``live`` and `vic console list` shows ``vm`` connected."""
    await typed_reaches(vspc, live, text)
    entry = await listed(vspc, vm)
    assert entry is not None and entry["connected"], entry


async def test_short_second_stream_leaves_input_with_the_live_vm(vspc: Vspc) -> None:
    """A short second relayed stream for a connected VM ends; the operator's input
    still reaches the live one and `vic console list` shows it connected."""
    live = await second_stream_then_one_ends(vspc, "vm-three", (1000, 100), 7, ends="newer")
    await input_reaches_the_connected(vspc, "vm-three", live, b"after the short stream\r")
    await live.send(1000)
    await live.stream.aclose()


async def test_overlapping_streams_input_follows_the_one_still_live(vspc: Vspc) -> None:
    """Two streams for one VM overlap and the older closes: input goes to the newer."""
    newer = await second_stream_then_one_ends(vspc, "vm-overlap", (500, 500), 8, ends="older")
    await input_reaches_the_connected(vspc, "vm-overlap", newer, b"to the newer stream\r")
    await newer.stream.aclose()


# ---- item 15: keys typed while the VM is away


async def notice_after(client: trio.abc.Stream, seen: bytearray, timeout: float = 10.0) -> str:
    """Read the attached client's stream until one more `[vic console: ...]` notice."""
    start = seen.count(b"[vic console:")
    with trio.move_on_after(timeout):
        while seen.count(b"[vic console:") <= start or not seen.endswith(b"]\r\n"):
            chunk = await client.receive_some(65536)
            assert chunk, "console session closed"
            seen += chunk
    assert seen.count(b"[vic console:") > start, (
        f"no notice within {timeout} s after {bytes(seen)!r}"
    )
    return seen[seen.rfind(b"[vic console:") :].decode("utf-8", "replace")


async def test_keys_typed_to_a_departed_vm_are_discarded_with_a_notice(vspc: Vspc) -> None:
    """The VM disconnects (attached clients are told), keys typed meanwhile are
    discarded with a notice to the typist, the VM reconnects (clients are told)
    and its new connection gets only what is typed after that."""
    async with trio.open_nursery() as n:
        honest = await honest_vm(n, vspc, VICTIM_HOST)
        client = await vspc.attach(honest.uuid, "rw")
        seen = bytearray()
        await honest.conn.aclose()
        gone = await notice_after(client, seen)
        assert "disconnect" in gone.lower() or "not connected" in gone.lower(), gone
        await client.send_all(b"typed-while-away\r")
        if "discard" not in gone.lower():  # (unless the first notice said so already)
            discarded = await notice_after(client, seen)
            assert "discard" in discarded.lower(), discarded
        again = await open_esx(n, vspc, honest.conn.vm, VICTIM_HOST)
        back = await notice_after(client, seen)
        assert "connect" in back.lower(), back
        await client.send_all(b"marker\r")
        with trio.fail_after(10):
            got = await again.receive_console_exactly(len(b"marker\r"))
        assert got == b"marker\r", f"the reconnected VM got {got!r} (keys typed while away?)"
        await client.aclose()
        await again.aclose()


# ---- item 14: departed VMs


async def churn(vspc: Vspc, first: int, count: int, size: int = 2048, batch: int = 50) -> None:
    """Short-lived VMs, each writing ``pattern(size, k)`` and leaving; in batches,
    each handled by the daemon (accepted and gone) before the next, so what is
    measured is what departed VMs leave behind, not streams still in flight."""
    connected = await vspc.daemon.metric("vspc_connected_vms")
    for start in range(first, first + count, batch):
        accepted = await vspc.daemon.metric(ACCEPTED, result="accepted")
        n = min(batch, first + count - start)
        for k in range(start, start + n):
            vm = await raw_vm(vspc, f"churn-{k:04d}", seed=k)
            await vm.send(size)
            await vm.stream.aclose()

        async def handled(want: float = accepted + n) -> bool:
            return (
                await vspc.daemon.metric(ACCEPTED, result="accepted") >= want
                and await vspc.daemon.metric("vspc_connected_vms") <= connected
            )

        await wait_until_async(handled, 30, f"churned VMs {start}..{start + n - 1} handled")


@pytest.mark.slow
async def test_departed_consoles_are_bounded_and_survive_a_restart(tmp_path: Path) -> None:
    """1,200 short-lived VMs (64 KiB of console each, a full replay ring) with
    `retention = 1` and `max-departed = 20`: the vSPC's memory stays bounded (on
    main it grows by ~100 MiB over 1,100 departed VMs); after a restart `vic
    console list` shows the departed VMs from disk and replay serves their bytes."""
    # (small log queues: memory the log writer holds for the disk is not what is measured)
    over: dict[str, Any] = {
        "console": {
            "retention": 1.0,
            "max-departed": 20,
            "log-queue-bytes": 256 << 10,
            "log-queue-total-bytes": 2 * MiB,
        }
    }
    async with start_vspc(tmp_path, **over) as vspc:
        config = vspc.config
        async with trio.open_nursery() as n:
            honest = await honest_vm(n, vspc, VICTIM_HOST, seed=14)
            await churn(vspc, 0, 100, CHURN_BYTES)
            rss = vspc.daemon.rss()
            await churn(vspc, 100, 1100, CHURN_BYTES)
            await honest.send(4096)
            await honest.check()  # (the log writer has caught up with the churn)
            grown = vspc.daemon.rss() - rss
            assert grown <= RSS_SLACK, f"RSS grew {grown / MiB:.1f} MiB over 1,100 departed VMs"
            await honest.conn.aclose()
        assert await vspc.daemon.stop() == 0
    async with run_daemon("vspc", tmp_path, config, name="vspc-restarted") as d:
        again = Vspc(d, config, tmp_path)
        entry = await listed(again, "churn-1199")
        assert entry is not None, "the departed VM's history is not listed after a restart"
        assert not entry["connected"]
        client = await again.attach("churn-1199", "ro", replay=4096)
        got = bytearray()
        with trio.move_on_after(10):
            while pattern(CHURN_BYTES, 1199)[-4096:] not in got:
                got += await client.receive_some(65536)
        assert pattern(CHURN_BYTES, 1199)[-4096:] in got, (
            f"replay after the restart: {bytes(got[:64])!r}..."
        )
        await client.aclose()
