"""vMotion end to end under pressure: the concurrent limit, a client that stopped
reading, a stalled disk, a reset connection, attached clients across vMotions
(the ESX simulator against the real vSPC service over kernel TCP)."""

from __future__ import annotations

import os
import random
import socket
import struct
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.support.waiting import wait_until
from vic.lab import telnet_wire as tw
from vic.lab.esx_sim import (
    SimVM,
    VMotionNotNow,
    migrate,
    random_seq,
)
from vspc.console.logfile import file_stem

from .conftest import attach_console, metric, read_exactly, start_vspc
from .vmotion_e2e_util import HOST, events_of, key_of, open_vm, server_conn


async def test_notnow_when_pending_and_at_the_concurrent_limit(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    service = await start_vspc(tmp_path, nursery, max_concurrent=1)
    rng = random.Random(17)
    vm_a, vm_b = SimVM.random(rng), SimVM.random(rng)
    with trio.fail_after(15):
        a = await open_vm(service, nursery, vm_a)
        b = await open_vm(service, nursery, vm_b)
        seq_a = random_seq(rng, with_ff=True)
        secret_a = await a.vmotion_begin(seq_a)
        again = random_seq(rng, with_ff=True)
        with pytest.raises(VMotionNotNow):
            await a.vmotion_begin(again)  # one already pending on this port
        assert a.ext_received(tw.VMOTION_NOTNOW) == [again]
        seq_b = random_seq(rng, with_ff=True)
        with pytest.raises(VMotionNotNow):
            await b.vmotion_begin(seq_b)  # max_concurrent = 1 reached
        assert b.ext_received(tw.VMOTION_NOTNOW) == [seq_b]
        dest_a = await open_vm(service, nursery, vm_a, do_proxy=False)
        await dest_a.vmotion_peer(seq_a, secret_a)
        await dest_a.vmotion_complete(seq_a)
        await a.aclose()
        m = await migrate(b, HOST, service.esx_port or 0, nursery=nursery, rng=rng)
        await m.dest.send_console(b"b-moved")
        await dest_a.send_console(b"a-moved")
        viewer_a = await attach_console(service, vm_a.canonical_uuid, "ro")
        viewer_b = await attach_console(service, vm_b.canonical_uuid, "ro")
        assert await read_exactly(viewer_a, 7) == b"a-moved"
        assert await read_exactly(viewer_b, 7) == b"b-moved"
    assert metric(service, "vspc_vmotions_total", outcome="notnow") == 2
    assert metric(service, "vspc_vmotions_total", outcome="complete") == 2
    assert not a.violations and not b.violations


async def test_begin_answered_while_a_client_stopped_reading(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A console client that stops reading costs the VM nothing: BEGIN is answered
    (long before ESX's 5 s), a reading client gets every byte, the stalled one is dropped."""
    service = await start_vspc(tmp_path, nursery, console={"client_queue_bytes": 192 * 1024})
    rng = random.Random(18)
    vm = SimVM.random(rng)
    key = key_of(vm)
    payload = random.Random(19).randbytes(2 << 20)
    got = bytearray()
    with trio.fail_after(15):
        src = await open_vm(service, nursery, vm)
        await src.send_console(b"<")
        await wait_until(lambda: service.consoles.get(key) is not None)
        stalled = await attach_console(service, vm.canonical_uuid, "rw")  # never read
        reader = await attach_console(service, vm.canonical_uuid, "ro")
        done = trio.Event()
        progress = trio.Event()

        async def read_all() -> None:
            nonlocal progress
            while len(got) < 1 + len(payload) + 1:
                chunk = await reader.receive_some(65536)
                assert chunk, bytes(got[-100:])
                got.extend(chunk)
                progress.set()
                progress = trio.Event()
            done.set()

        nursery.start_soon(read_all)
        step = 128 * 1024
        for k in range(0, len(payload), step):  # paced by the reading client only
            await src.send_console(payload[k : k + step])
            while len(got) < 1 + min(k + step, len(payload)):  # < 192 KiB in flight
                await progress.wait()
        seq = random_seq(rng, with_ff=True)
        secret = await src.vmotion_begin(seq)  # the simulator gives up after 5 s
        assert secret
        assert src.stats.begin_latencies[0] < 5.0
        dest = await open_vm(service, nursery, vm, do_proxy=False)
        await dest.vmotion_peer(seq, secret)
        await dest.vmotion_complete(seq)
        await src.aclose()
        await dest.send_console(b">")
        await done.wait()
    assert bytes(got) == b"<" + payload + b">"
    assert metric(service, "vspc_vmotion_begin_to_goahead_seconds_count") == 1
    assert metric(service, "vspc_slow_clients_dropped_total") == 1
    del stalled


async def test_begin_answered_while_the_disk_is_stalled(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The port's log file is a FIFO nobody reads: the log writer's thread blocks
    in open(), the console stops taking bytes; the ESX reader goes on, BEGIN is
    answered, and once the 'disk' moves every byte lands once, in order."""
    service = await start_vspc(
        tmp_path, nursery, console={"log_queue_bytes": 4096, "ring_bytes": 128 * 1024}
    )
    rng = random.Random(20)
    vm = SimVM.random(rng)
    key = key_of(vm)
    log_dir = service.config.console.log_dir
    assert log_dir is not None
    log_dir.mkdir(parents=True, exist_ok=True)
    fifo = log_dir / f"{file_stem(key)}.log"
    os.mkfifo(fifo)
    payload = random.Random(21).randbytes(64 * 1024)
    fd = -1
    try:
        with trio.fail_after(15):
            src = await open_vm(service, nursery, vm)
            await src.send_console(payload)
            seq = random_seq(rng, with_ff=True)
            secret = await src.vmotion_begin(seq)  # the disk has not moved yet
            assert secret
            console = service.consoles.get(key)
            assert console is not None
            assert console.bytes_from_vm < len(payload)  # the console is stalled behind the disk
            dest = await open_vm(service, nursery, vm, do_proxy=False)
            await dest.vmotion_peer(seq, secret)
            await dest.vmotion_complete(seq)
            await src.aclose()
            await dest.send_console(b"after")
            # now let the disk move
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            logged = bytearray()
            pipe = trio.lowlevel.FdStream(os.dup(fd))
            want = payload + b"after"
            while len(logged) < len(want):
                logged += await pipe.receive_some(65536)
            assert bytes(logged) == want
            viewer = await attach_console(service, vm.canonical_uuid, "ro", replay=len(want))
            assert await read_exactly(viewer, len(want)) == want
            await pipe.aclose()
    finally:
        if fd == -1:  # never leave the writer thread blocked in open()
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        os.close(fd)
    assert metric(service, "vspc_vmotion_begin_to_goahead_seconds_count") == 1
    assert not src.violations


@pytest.mark.parametrize("during_vmotion", [False, True], ids=["idle", "pending-vmotion"])
async def test_reset_connection_costs_nothing_else(
    tmp_path: Path, nursery: trio.Nursery, during_vmotion: bool
) -> None:
    """An ESX connection that dies with a TCP RST (while the vSPC writes to it) is
    one log line: the service and every other VM carry on."""
    service = await start_vspc(tmp_path, nursery)
    rng = random.Random(24)
    good_vm, bad_vm = SimVM.random(rng), SimVM.random(rng)
    with trio.fail_after(15):
        good = await open_vm(service, nursery, good_vm)
        bad = await open_vm(service, nursery, bad_vm)
        await good.send_console(b"g")
        await bad.send_console(b"b")
        await wait_until(lambda: service.consoles.get(key_of(bad_vm)) is not None)
        viewer = await attach_console(service, good_vm.canonical_uuid, "ro")
        typist = await attach_console(service, bad_vm.canonical_uuid, "rw")
        if during_vmotion:
            await bad.vmotion_begin(random_seq(rng, with_ff=True))
        sock = bad.stream.socket  # type: ignore[attr-defined]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await typist.send_all(b"x" * 200_000)
        await bad.aclose()  # RST
        await wait_until(lambda: service.board.carrier(key_of(bad_vm)) is None)
        await good.send_console(b"ood")
        assert await read_exactly(viewer, 4) == b"good"
        again = await open_vm(service, nursery, bad_vm)
        await again.send_console(b"back")
    assert service.board.carrier(key_of(good_vm)) is server_conn(service, good)


async def test_attached_clients_survive_vmotions(tmp_path: Path, nursery: trio.Nursery) -> None:
    """The same attach streams keep receiving (and typing) across two vMotions."""
    service = await start_vspc(tmp_path, nursery)
    rng = random.Random(22)
    vm = SimVM.random(rng)
    key = key_of(vm, "ttyS1")
    with trio.fail_after(15):
        host = await open_vm(service, nursery, vm, label="ttyS1")
        await host.send_console(b"0")
        await wait_until(lambda: service.consoles.get(key) is not None)
        viewer = await attach_console(service, vm.canonical_uuid, "ro", label="ttyS1")
        typist = await attach_console(service, vm.canonical_uuid, "exclusive", label="ttyS1")
        assert await read_exactly(viewer, 1) == b"0"
        await read_exactly(typist, 1)
        console = service.consoles.get(key)
        assert console is not None and len(console.clients) == 2
        for hop in range(1, 3):
            m = await migrate(
                host, HOST, service.esx_port or 0, nursery=nursery, rng=rng, dest_do_proxy=hop == 2
            )
            host = m.dest
            await host.send_console(str(hop).encode())
            assert await read_exactly(viewer, 1) == str(hop).encode()
            assert await read_exactly(typist, 1) == str(hop).encode()
            await typist.send_all(b"k%d" % hop)
            assert await host.receive_console_exactly(2) == b"k%d" % hop
            assert len(console.clients) == 2
            assert console.connected
    events = await events_of(service, key)
    kinds = [e["event"] for e in events]
    assert kinds.count("vmotion_begin") == 2 and kinds.count("vmotion_complete") == 2
    assert "client_detach" not in kinds
    # the sidecar log: each connection's connect (as ESX names the VM) and disconnect, timed
    connects = [e for e in events if e["event"] == "connect"]
    assert len(connects) == 3 and all(e["uuid"] == vm.uuid for e in connects)
    assert kinds.count("disconnect") == 2  # the two sources
    assert kinds.index("connect") < kinds.index("identity") < kinds.index("vmotion_begin")
    assert all(
        isinstance(e["ts"], float) and isinstance(e["time"], str) and e["time"].endswith("Z")
        for e in events
    )
