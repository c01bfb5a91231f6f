"""The vSPC end to end: the ESX simulator (an independent implementation of ESX's
side) against the real service over kernel TCP, consoles read through the real
attach socket."""

from __future__ import annotations

import random
from pathlib import Path

import trio
import trio.testing

from common.proto.console import protocol as proto
from tests.support.waiting import wait_until
from vic.lab.esx_sim import ConnectionClosed, EsxConnection, SimVM, migrate, random_seq
from vspc.console import client as cc
from vspc.service import VspcService

from .conftest import make_config


async def read_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        assert chunk, f"stream ended after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


async def attach(service: VspcService, vm: SimVM, mode: str = "ro") -> trio.abc.Stream:
    ep = cc.Endpoint(socket=service.config.console.socket)
    stream, status, rest = await cc.attach(
        ep,
        proto.AttachRequest(vm=vm.canonical_uuid, mode=mode, replay=1 << 16),  # type: ignore[arg-type]
    )
    assert status.get("ok"), status
    from vspc.prefixed import PrefixedStream

    return PrefixedStream(stream, rest)


def esx_port(service: VspcService) -> int:
    assert service.esx_port is not None
    return service.esx_port


async def wait_console(service: VspcService, vm: SimVM) -> None:
    await wait_until(
        lambda: any(c.key.uuid == vm.canonical_uuid for c in service.consoles.list()),
        5,
        f"the console of {vm.canonical_uuid} listed",
    )


async def test_console_bytes_arrive_exactly(vspc: VspcService, nursery: trio.Nursery) -> None:
    rng = random.Random(1)
    vm = SimVM.random(rng)
    payload = bytes(range(256)) * 8 + b"\r\n\x00\x11\xff\xff login: "
    with trio.fail_after(20):
        esx = await EsxConnection.open(nursery, "127.0.0.1", esx_port(vspc), vm=vm, label="com1")
        await esx.send_console(payload[:100])
        await wait_console(vspc, vm)
        client = await attach(vspc, vm)
        await esx.send_console(payload[100:])
        got = await read_exactly(client, len(payload))
    assert got == payload
    assert not esx.violations


async def test_one_byte_segments(vspc: VspcService, nursery: trio.Nursery) -> None:
    vm = SimVM.random(random.Random(2))
    payload = b"\xff\x00abc\xff\r\n" * 20
    with trio.fail_after(20):
        esx = await EsxConnection.open(
            nursery, "127.0.0.1", esx_port(vspc), vm=vm, one_byte_segments=True
        )
        await esx.send_console(payload)
        await wait_console(vspc, vm)
        client = await attach(vspc, vm)
        assert await read_exactly(client, len(payload)) == payload
    assert not esx.violations


async def test_vmotion_loses_no_byte_either_way(vspc: VspcService, nursery: trio.Nursery) -> None:
    rng = random.Random(3)
    vm = SimVM.random(rng)
    with trio.fail_after(30):
        src = await EsxConnection.open(nursery, "127.0.0.1", esx_port(vspc), vm=vm)
        await src.send_console(b"before-")
        await wait_console(vspc, vm)
        viewer = await attach(vspc, vm, "ro")
        typist = await attach(vspc, vm, "rw")
        assert await read_exactly(viewer, 7) == b"before-"
        await read_exactly(typist, 7)
        await typist.send_all(b"k1")
        assert await src.receive_console_exactly(2) == b"k1"
        seq = random_seq(rng, with_ff=True)
        secret = await src.vmotion_begin(seq)
        # appliance->VM while the VM is paused: held, then flushed to the destination
        await typist.send_all(b"during\xff")
        await trio.testing.wait_all_tasks_blocked()
        dest = await EsxConnection.open(nursery, "127.0.0.1", esx_port(vspc), vm=vm, do_proxy=False)
        await dest.vmotion_peer(seq, secret)
        await src.send_console(b"last-from-source-")
        await dest.vmotion_complete(seq)
        await dest.send_console(b"from-dest")
        await src.aclose()
        expected = b"last-from-source-from-dest"
        assert await read_exactly(viewer, len(expected)) == expected
        assert await dest.receive_console_exactly(7) == b"during\xff"
        await typist.send_all(b"after")
        assert await dest.receive_console_exactly(5) == b"after"
    assert not src.violations and not dest.violations


async def test_migrate_helper_and_wrong_cookie(vspc: VspcService, nursery: trio.Nursery) -> None:
    rng = random.Random(4)
    vm = SimVM.random(rng)
    with trio.fail_after(30):
        src = await EsxConnection.open(nursery, "127.0.0.1", esx_port(vspc), vm=vm)
        seq = random_seq(rng, with_ff=True)
        secret = await src.vmotion_begin(seq)
        thief = await EsxConnection.open(
            nursery, "127.0.0.1", esx_port(vspc), vm=vm, do_proxy=False
        )
        refused = False
        try:
            await thief.vmotion_peer(seq, secret[:-1] + bytes([secret[-1] ^ 1]), timeout=2)
        except Exception:
            refused = True
        assert refused
        await src.vmotion_abort()
        await src.send_console(b"still-here")
        await wait_console(vspc, vm)
        viewer = await attach(vspc, vm)
        assert await read_exactly(viewer, 10) == b"still-here"
        m = await migrate(src, "127.0.0.1", esx_port(vspc), nursery=nursery, rng=rng)
        await m.dest.send_console(b"moved")
        assert await read_exactly(viewer, 5) == b"moved"


async def test_bad_connection_costs_nothing_else(tmp_path: Path, nursery: trio.Nursery) -> None:
    service: VspcService = await nursery.start(VspcService(make_config(tmp_path)).run)
    rng = random.Random(5)
    good_vm, bad_vm = SimVM.random(rng), SimVM.random(rng)
    with trio.fail_after(30):
        good = await EsxConnection.open(nursery, "127.0.0.1", esx_port(service), vm=good_vm)
        await good.send_console(b"a" * 1000)
        await wait_console(service, good_vm)
        viewer = await attach(service, good_vm)
        bad = await EsxConnection.open(nursery, "127.0.0.1", esx_port(service), vm=bad_vm)
        try:
            await bad.send_overlong_sub(1 << 18)
        except ConnectionClosed:
            pass  # the vSPC closes the hostile connection while it is still sending
        await good.send_console(b"b" * 1000)
        await bad.wait_closed(10)
        got = await read_exactly(viewer, 2000)
    assert got == b"a" * 1000 + b"b" * 1000
    errors = service.metrics.registry.get_sample_value(
        "vspc_protocol_errors_total", {"where": "esx"}
    )
    assert errors == 1


async def test_labelled_port_migrates_to_destination_without_do_proxy(
    vspc: VspcService, nursery: trio.Nursery
) -> None:
    """One VM, two serial ports; the destination sends no DO-PROXY: PEER binds it."""
    rng = random.Random(6)
    vm = SimVM.random(rng)
    with trio.fail_after(30):
        com1 = await EsxConnection.open(nursery, "127.0.0.1", esx_port(vspc), vm=vm, label="com1")
        com2 = await EsxConnection.open(nursery, "127.0.0.1", esx_port(vspc), vm=vm, label="com2")
        await com1.send_console(b"one")
        await com2.send_console(b"two")
        m = await migrate(com2, "127.0.0.1", esx_port(vspc), nursery=nursery, rng=rng)
        await m.dest.send_console(b"-moved")
        ep = cc.Endpoint(socket=vspc.config.console.socket)
        s, status, rest = await cc.attach(
            ep, proto.AttachRequest(vm=vm.canonical_uuid, label="com2", mode="ro", replay=100)
        )
        assert status.get("ok"), status
        from vspc.prefixed import PrefixedStream

        assert await read_exactly(PrefixedStream(s, rest), 9) == b"two-moved"
        s1, _status1, rest1 = await cc.attach(
            ep, proto.AttachRequest(vm=vm.canonical_uuid, label="com1", mode="ro", replay=100)
        )
        assert await read_exactly(PrefixedStream(s1, rest1), 3) == b"one"
