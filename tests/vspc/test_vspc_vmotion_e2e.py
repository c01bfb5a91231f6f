"""Hostile vMotion cases end to end: the ESX simulator (an independent
implementation of ESX's side) against the real vSPC service over kernel TCP,
consoles read and typed into through the real attach socket."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing

from tests.support.waiting import wait_until
from vic.lab import telnet_wire as tw
from vic.lab.esx_sim import (
    EsxConnection,
    SimVM,
    VMotionRefused,
    known_without,
    migrate,
    random_seq,
)
from vspc.core.identity import DEFAULT_LABEL

from .conftest import attach_console, metric, read_exactly, start_vspc
from .vmotion_e2e_util import FF_SECRET, HOST, events_of, held, key_of, open_vm, server_conn


async def test_ff_in_seq_and_secret_split_at_every_byte(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """0xFF in seq and secret, every frame split at every byte (both hosts), a port
    label the destination never sends (no DO-PROXY), bytes both ways across it."""
    service = await start_vspc(tmp_path, nursery, secret_source=lambda n: FF_SECRET[:n])
    rng = random.Random(10)
    vm = SimVM.random(rng)
    key = key_of(vm, "com2")
    with trio.fail_after(15):
        src = await open_vm(service, nursery, vm, label="com2", one_byte_segments=True)
        await src.send_console(b"boot\xff\r\n")
        await wait_until(lambda: service.consoles.get(key) is not None)
        viewer = await attach_console(service, vm.canonical_uuid, "ro", label="com2")
        typist = await attach_console(service, vm.canonical_uuid, "rw", label="com2")
        assert await read_exactly(viewer, 7) == b"boot\xff\r\n"
        await read_exactly(typist, 7)

        seq = random_seq(rng, with_ff=True)
        secret = await src.vmotion_begin(seq)
        assert secret == FF_SECRET
        assert src.ext_received(tw.VMOTION_GOAHEAD) == [seq + FF_SECRET]

        await typist.send_all(b"held\xff\xff")
        await held(service, key, 6)
        assert src.console_pending() == b""

        dest = await open_vm(service, nursery, vm, do_proxy=False, one_byte_segments=True)
        await dest.vmotion_peer(seq, secret)
        assert dest.ext_received(tw.VMOTION_PEER_OK) == [seq]
        await src.send_console(b"src-tail\xff")
        await dest.vmotion_complete(seq)
        await dest.send_console(b"dest\xff")
        await src.aclose()

        assert await dest.receive_console_exactly(6) == b"held\xff\xff"
        want = b"src-tail\xffdest\xff"
        assert await read_exactly(viewer, len(want)) == want
        await typist.send_all(b"\xffafter")
        assert await dest.receive_console_exactly(6) == b"\xffafter"
    assert service.board.carrier(key) is server_conn(service, dest)
    assert metric(service, "vspc_vmotions_total", outcome="complete") == 1
    assert not src.violations and not dest.violations


BAD_COOKIES = [
    pytest.param(lambda seq, sec: seq + sec[:-1] + bytes([sec[-1] ^ 1]), id="last-secret-byte"),
    pytest.param(lambda seq, sec: seq + sec[:-1], id="secret-truncated"),
    pytest.param(lambda seq, sec: seq + sec + b"\x00", id="secret-extended"),
    pytest.param(lambda seq, sec: bytes([seq[0] ^ 1]) + seq[1:] + sec, id="wrong-seq"),
    pytest.param(lambda seq, sec: seq, id="seq-only"),
]


@pytest.mark.parametrize("thief_label", [None, "com1"], ids=["no-do-proxy", "same-label"])
async def test_wrong_cookie_refused_no_switch(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, thief_label: str | None
) -> None:
    caplog.set_level(logging.INFO, logger="vspc")
    service = await start_vspc(tmp_path, nursery)
    rng = random.Random(11)
    vm = SimVM.random(rng)
    key = key_of(vm, "com1")
    with trio.fail_after(15):
        src = await open_vm(service, nursery, vm, label="com1")
        await src.send_console(b"a")
        await wait_until(lambda: service.consoles.get(key) is not None)
        viewer = await attach_console(service, vm.canonical_uuid, "ro", label="com1")
        typist = await attach_console(service, vm.canonical_uuid, "rw", label="com1")
        assert await read_exactly(viewer, 1) == b"a"
        seq = random_seq(rng, with_ff=True)
        secret = await src.vmotion_begin(seq)
        await typist.send_all(b"typed")
        await held(service, key, 5)
        for param in BAD_COOKIES:
            make = cast(Callable[[bytes, bytes], bytes], param.values[0])
            thief = await open_vm(
                service, nursery, vm, label=thief_label, do_proxy=thief_label is not None
            )
            cookie = make(seq, secret)
            await thief.send_ext(tw.VMOTION_PEER, cookie)
            await thief.wait_closed(5)  # refused: the vSPC closes it
            assert not thief.ext_received(tw.VMOTION_PEER_OK)
            # no switch: the source still carries the port, the vMotion still pending
            assert service.board.carrier(key) is server_conn(service, src)
            assert [v.seq for v in service.board.pending_vmotions()] == [seq]
            await src.send_console(b".")
            assert await read_exactly(viewer, 1) == b"."
        # the genuine destination still gets through
        dest = await open_vm(service, nursery, vm, do_proxy=False)
        await dest.vmotion_peer(seq, secret)
        await dest.vmotion_complete(seq)
        await src.aclose()
        assert await dest.receive_console_exactly(5) == b"typed"
        await dest.send_console(b"moved")
        assert await read_exactly(viewer, 5) == b"moved"
    n = len(BAD_COOKIES)
    assert metric(service, "vspc_vmotions_total", outcome="peer_refused") == n
    assert metric(service, "vspc_vmotions_total", outcome="complete") == 1
    refused_logs = [r for r in caplog.records if "peer_refused" in r.getMessage()]
    assert len(refused_logs) == n
    kinds = [e["event"] for e in await events_of(service, key)]
    assert kinds.count("peer_refused") == n - 1  # a wrong seq names no port
    assert not src.violations and not dest.violations


async def test_peer_for_unknown_seq(tmp_path: Path, nursery: trio.Nursery) -> None:
    """PEER with a sequence no vMotion has: refused (no PEER-OK), counted; a
    connection with no identity is closed, a VM's own connection is kept."""
    service = await start_vspc(tmp_path, nursery)
    rng = random.Random(12)
    vm, other = SimVM.random(rng), SimVM.random(rng)
    with trio.fail_after(15):
        src = await open_vm(service, nursery, vm)
        # a connected VM (it carries its own port) sends PEER with nothing pending
        bystander = await open_vm(service, nursery, other)
        await bystander.send_ext(tw.VMOTION_PEER, b"\xff\x01\x02" + b"\xff" * 8)
        await wait_until(
            lambda: metric(service, "vspc_vmotions_total", outcome="peer_refused") == 1
        )
        seq = random_seq(rng, with_ff=True)
        secret = await src.vmotion_begin(seq)
        # a connection that never says which VM it is sends PEER for an unknown seq
        stranger = await open_vm(
            service,
            nursery,
            other,
            do_proxy=False,
            known=known_without(tw.VM_VC_UUID, tw.GET_VM_VC_UUID),
        )
        with pytest.raises(VMotionRefused):
            await stranger.vmotion_peer(random_seq(rng, with_ff=True), secret)
        assert [v.seq for v in service.board.pending_vmotions()] == [seq]
        dest = await open_vm(service, nursery, vm, do_proxy=False)
        await dest.vmotion_peer(seq, secret)
        await dest.vmotion_complete(seq)
        await bystander.send_console(b"unharmed")
        viewer = await attach_console(service, other.canonical_uuid, "ro")
        assert await read_exactly(viewer, 8) == b"unharmed"
    assert not bystander.ext_received(tw.VMOTION_PEER_OK)
    assert not bystander.closed.is_set()
    assert metric(service, "vspc_vmotions_total", outcome="peer_refused") == 2
    assert metric(service, "vspc_vmotions_total", outcome="complete") == 1


async def test_abort_flushes_held_bytes_to_source_at_once(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    service = await start_vspc(tmp_path, nursery)
    rng = random.Random(13)
    vm = SimVM.random(rng)
    key = key_of(vm)
    with trio.fail_after(15):
        src = await open_vm(service, nursery, vm)
        await src.send_console(b"x")
        await wait_until(lambda: service.consoles.get(key) is not None)
        viewer = await attach_console(service, vm.canonical_uuid, "ro")
        typist = await attach_console(service, vm.canonical_uuid, "rw")
        await read_exactly(viewer, 1)
        seq = random_seq(rng, with_ff=True)
        secret = await src.vmotion_begin(seq)
        await typist.send_all(b"held-1\xff")
        dest = await open_vm(service, nursery, vm, do_proxy=False)
        await dest.vmotion_peer(seq, secret)  # PEERED: a destination was accepted
        await typist.send_all(b"held-2")
        await held(service, key, 13)
        assert src.console_pending() == b""
        await src.vmotion_abort()
        # flushed at once, with no further byte from anyone
        assert await src.receive_console_exactly(13) == b"held-1\xffheld-2"
        await dest.wait_closed(5)  # the destination that lost is closed
        # the source carries on, both ways, directly
        await src.send_console(b"still-here")
        assert await read_exactly(viewer, 10) == b"still-here"
        await typist.send_all(b"direct")
        assert await src.receive_console_exactly(6) == b"direct"
        assert service.board.to_vm_buffered(key) == 0
        # and the port can migrate again
        m = await migrate(src, HOST, service.esx_port or 0, nursery=nursery, rng=rng)
        await m.dest.send_console(b"moved")
        assert await read_exactly(viewer, 5) == b"moved"
    assert metric(service, "vspc_vmotions_total", outcome="abort") == 1
    assert metric(service, "vspc_vmotions_total", outcome="complete") == 1
    kinds = [e["event"] for e in await events_of(service, key)]
    assert "vmotion_abort" in kinds and "vmotion_complete" in kinds
    assert not src.violations and not m.dest.violations


@pytest.mark.parametrize("with_dest", [False, True], ids=["no-destination", "dest-never-completes"])
async def test_expiry_flushes_and_unsticks_the_port(
    tmp_path: Path, nursery: trio.Nursery, with_dest: bool
) -> None:
    service = await start_vspc(tmp_path, nursery, timeout=0.5)
    rng = random.Random(14)
    vm = SimVM.random(rng)
    key = key_of(vm)
    with trio.fail_after(10):
        src = await open_vm(service, nursery, vm)
        await src.send_console(b"x")
        await wait_until(lambda: service.consoles.get(key) is not None)
        typist = await attach_console(service, vm.canonical_uuid, "rw")
        seq = random_seq(rng, with_ff=True)
        dest: EsxConnection | None = None
        if with_dest:
            m = await migrate(
                src, HOST, service.esx_port or 0, nursery=nursery, seq=seq, complete=False
            )
            dest = m.dest
        else:
            await src.vmotion_begin(seq)
        await typist.send_all(b"waiting\xff")
        await held(service, key, 8)
        # nobody sends anything more: the switchboard's deadline alone unsticks it
        assert await src.receive_console_exactly(8) == b"waiting\xff"
        assert not service.board.pending_vmotions()
        if dest is not None:
            await dest.wait_closed(5)
        await typist.send_all(b"direct")
        assert await src.receive_console_exactly(6) == b"direct"
        secret = await src.vmotion_begin(random_seq(rng))  # not NOTNOW: not stuck
        assert secret
    assert metric(service, "vspc_vmotions_total", outcome="expired") == 1
    kinds = [e["event"] for e in await events_of(service, key)]
    assert "vmotion_expire" in kinds


@pytest.mark.parametrize("when", ["before-peer", "after-peer"])
async def test_source_closing_early(tmp_path: Path, nursery: trio.Nursery, when: str) -> None:
    """The source sends its last bytes and closes before COMPLETE: nothing is lost,
    the source's bytes come first, held input goes to the destination."""
    service = await start_vspc(tmp_path, nursery)
    rng = random.Random(15)
    vm = SimVM.random(rng)
    key = key_of(vm)
    with trio.fail_after(15):
        src = await open_vm(service, nursery, vm)
        await src.send_console(b"first-")
        await wait_until(lambda: service.consoles.get(key) is not None)
        viewer = await attach_console(service, vm.canonical_uuid, "ro")
        typist = await attach_console(service, vm.canonical_uuid, "rw")
        seq = random_seq(rng, with_ff=True)
        secret = await src.vmotion_begin(seq)
        await typist.send_all(b"for-the-vm")
        dest = await open_vm(service, nursery, vm, do_proxy=False)
        if when == "after-peer":
            await dest.vmotion_peer(seq, secret)
        await dest.send_console(b"dest-early-")  # before COMPLETE: held behind the source
        await src.send_console(b"src-last-")
        await src.aclose()
        if when == "before-peer":
            await dest.vmotion_peer(seq, secret)
        await dest.vmotion_complete(seq)
        await dest.send_console(b"dest-late")
        want = b"first-src-last-dest-early-dest-late"
        assert await read_exactly(viewer, len(want)) == want
        assert await dest.receive_console_exactly(10) == b"for-the-vm"
    assert service.board.carrier(key) is server_conn(service, dest)
    assert not dest.violations


async def test_source_drains_before_the_destination(tmp_path: Path, nursery: trio.Nursery) -> None:
    """After COMPLETE the source may still send: its bytes come first, even when the
    destination's bytes reached the vSPC earlier; they follow once the source closes."""
    service = await start_vspc(tmp_path, nursery)
    rng = random.Random(23)
    vm = SimVM.random(rng)
    key = key_of(vm)
    with trio.fail_after(15):
        src = await open_vm(service, nursery, vm)
        await src.send_console(b"a")
        await wait_until(lambda: service.consoles.get(key) is not None)
        viewer = await attach_console(service, vm.canonical_uuid, "ro")
        assert await read_exactly(viewer, 1) == b"a"
        m = await migrate(
            src, HOST, service.esx_port or 0, nursery=nursery, rng=rng, close_source=False
        )
        await m.dest.send_console(b"from-dest")
        await trio.testing.wait_all_tasks_blocked()  # the vSPC has read it (and holds it)
        await src.send_console(b"from-source-")
        await trio.testing.wait_all_tasks_blocked()
        await src.aclose()
        want = b"from-source-from-dest"
        assert await read_exactly(viewer, len(want)) == want


async def test_source_gone_and_no_destination_then_vm_reconnects(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Source closes after BEGIN, nobody comes, the vMotion expires; input typed
    meanwhile waits (bounded) and goes to the VM's next connection at once."""
    service = await start_vspc(tmp_path, nursery, timeout=0.3)
    rng = random.Random(16)
    vm = SimVM.random(rng)
    key = key_of(vm)
    with trio.fail_after(10):
        src = await open_vm(service, nursery, vm)
        await src.send_console(b"x")
        await wait_until(lambda: service.consoles.get(key) is not None)
        typist = await attach_console(service, vm.canonical_uuid, "rw")
        await src.vmotion_begin(random_seq(rng, with_ff=True))
        await src.aclose()
        await typist.send_all(b"typed-while-away")
        await held(service, key, 16)
        await wait_until(lambda: not service.board.pending_vmotions())
        assert service.board.carrier(key) is None
        again = await open_vm(service, nursery, vm)
        assert await again.receive_console_exactly(16) == b"typed-while-away"
        await again.send_console(b"!")
    assert metric(service, "vspc_vmotions_total", outcome="expired") == 1


async def test_unlabelled_connection_during_a_vmotion_is_not_stuck(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A connection with no port label (no DO-PROXY) for a VM with a pending vMotion
    waits for VMOTION-PEER; when the vMotion settles without it, it is the VM's
    default port and its held bytes are delivered."""
    service = await start_vspc(tmp_path, nursery)
    rng = random.Random(25)
    vm = SimVM.random(rng)
    with trio.fail_after(10):
        com1 = await open_vm(service, nursery, vm, label="com1")
        await com1.vmotion_begin(random_seq(rng, with_ff=True))
        other = await open_vm(service, nursery, vm, do_proxy=False)
        await other.send_console(b"second port\xff")
        await trio.testing.wait_all_tasks_blocked()
        assert service.board.port_of(server_conn(service, other)) is None  # waits for PEER
        await com1.vmotion_abort()
        await wait_until(lambda: service.consoles.get(key_of(vm)) is not None)
        viewer = await attach_console(service, vm.canonical_uuid, "ro", label=DEFAULT_LABEL)
        assert await read_exactly(viewer, 12) == b"second port\xff"
    assert service.board.carrier(key_of(vm)) is server_conn(service, other)
    assert service.board.carrier(key_of(vm, "com1")) is server_conn(service, com1)
