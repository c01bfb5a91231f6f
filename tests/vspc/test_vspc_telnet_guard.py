"""Hostile Telnet peers against the real vSPC over kernel TCP: takeover attempts,
vMotion slot floods, pre-identity floods, clients that never read, slowloris.
Several source hosts are played on loopback (127.0.0.2, 127.0.0.3 ...); timeouts run
on trio's autojump clock (virtual time: no test waits for them)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.support.waiting import wait_until
from vic.lab import telnet_wire as tw
from vic.lab.esx_errors import ConnectionClosed
from vic.lab.esx_sim import EsxConnection, SimVM, VMotionNotNow, known_without, migrate, random_seq
from vspc.core.identity import DEFAULT_LABEL, PortKey
from vspc.esx_conn import CONTROL_HIGH_WATER, READ_SIZE_BULK
from vspc.esx_conn import EsxConnection as ServerConn
from vspc.service import VspcService

from .conftest import attach_console, make_config, metric, read_exactly

HOST = "127.0.0.1"


async def start(tmp_path: Path, nursery: trio.Nursery, **listen: object) -> VspcService:
    config = make_config(tmp_path)
    config = replace(config, listen=replace(config.listen, **listen))  # type: ignore[arg-type]
    service: VspcService = await nursery.start(VspcService(config).run)
    return service


async def open_vm(
    service: VspcService, nursery: trio.Nursery, vm: SimVM, source: str = HOST, **knobs: Any
) -> EsxConnection:
    assert service.esx_port is not None
    return await EsxConnection.open(
        nursery, HOST, service.esx_port, vm=vm, local_address=source, **knobs
    )


def server_conn(service: VspcService, sim: EsxConnection) -> ServerConn:
    local = sim.stream.socket.getsockname()  # type: ignore[attr-defined]
    for c in service.board.connections():
        assert isinstance(c, ServerConn)
        if c.peer == f"{local[0]}:{local[1]}":
            return c
    raise AssertionError("no server connection")


def refused(service: VspcService, reason: str) -> float:
    return metric(service, "vspc_telnet_refused_total", reason=reason)


async def raw_connect(service: VspcService, source: str = HOST) -> trio.SocketStream:
    assert service.esx_port is not None
    return await trio.open_tcp_stream(HOST, service.esx_port, local_address=source)


async def closed_by_peer(stream: trio.SocketStream) -> None:
    """Read (and drop) until the vSPC closes the connection."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- item 7: takeover ------------------------------------------------------------


async def test_takeover_from_another_source_refused_victim_keeps_its_keys(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    service = await start(tmp_path, nursery)
    vm = SimVM.random(random.Random(1))
    key = PortKey(vm.canonical_uuid, DEFAULT_LABEL)
    victim = await open_vm(service, nursery, vm)
    await victim.send_console(b"login: ")
    await wait_until(lambda: service.consoles.get(key) is not None)
    viewer = await attach_console(service, vm.canonical_uuid, "ro")
    typist = await attach_console(service, vm.canonical_uuid, "rw")
    assert await read_exactly(viewer, 7) == b"login: "
    await read_exactly(typist, 7)
    victim_conn = server_conn(service, victim)

    thief = await open_vm(service, nursery, vm, source="127.0.0.2")
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed):
        await thief.send_console(b"EVIL")  # (it may be refused already)
    await thief.wait_closed(timeout=30)
    assert victim.timing_marks >= 1  # the carrier was probed, and answered
    assert service.board.carrier(key) is victim_conn
    await typist.send_all(b"hunter2\r")
    assert await victim.receive_console_exactly(8) == b"hunter2\r"
    assert thief.console_pending() == b""
    await victim.send_console(b"ok")
    assert await read_exactly(viewer, 2) == b"ok"  # nothing of the thief's came first
    assert refused(service, "takeover") == 1
    assert not victim.violations


async def test_takeover_allowed_once_the_old_connection_fails_the_probe(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    service = await start(tmp_path, nursery, probe_timeout=5.0)
    vm = SimVM.random(random.Random(2))
    key = PortKey(vm.canonical_uuid, DEFAULT_LABEL)
    hung = await open_vm(service, nursery, vm, answer_timing_mark=False)
    await wait_until(lambda: service.board.carrier(key) is not None)
    typist = await attach_console(service, vm.canonical_uuid, "rw")
    start_at = trio.current_time()
    new = await open_vm(service, nursery, vm, source="127.0.0.2")
    await hung.wait_closed(timeout=30)
    assert trio.current_time() - start_at >= 5.0 - 1e-6  # not before the probe timed out
    assert hung.timing_marks == 1
    await wait_until(lambda: service.board.carrier(key) is server_conn(service, new))
    await typist.send_all(b"after")
    assert await new.receive_console_exactly(5) == b"after"
    assert refused(service, "idle") == 1 and refused(service, "takeover") == 0


async def test_same_source_reconnect_takes_over_at_once(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    service = await start(tmp_path, nursery)
    vm = SimVM.random(random.Random(3))
    old = await open_vm(service, nursery, vm, answer_timing_mark=False)
    await wait_until(
        lambda: service.board.carrier(PortKey(vm.canonical_uuid, DEFAULT_LABEL)) is not None
    )
    t0 = trio.current_time()
    new = await open_vm(service, nursery, vm)
    await old.wait_closed(timeout=30)
    assert trio.current_time() - t0 < 1.0 and old.timing_marks == 0
    assert not new.closed.is_set()


@pytest.mark.parametrize("dest_do_proxy", [False, True])
async def test_vmotion_to_another_host_is_no_takeover(
    tmp_path: Path,
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    dest_do_proxy: bool,
) -> None:
    """The destination ESX host connects from another address: PEER, not a takeover."""
    service = await start(tmp_path, nursery)
    rng = random.Random(10)
    vm = SimVM.random(rng)
    src = await open_vm(service, nursery, vm)
    await wait_until(
        lambda: service.board.carrier(PortKey(vm.canonical_uuid, DEFAULT_LABEL)) is not None
    )
    typist = await attach_console(service, vm.canonical_uuid, "rw")
    m = await migrate(
        src,
        HOST,
        service.esx_port or 0,
        nursery=nursery,
        rng=rng,
        dest_do_proxy=dest_do_proxy,
        dest_local_address="127.0.0.2",
    )
    await typist.send_all(b"moved")
    assert await m.dest.receive_console_exactly(5) == b"moved"
    assert src.timing_marks == 0 and not m.dest.violations
    assert metric(service, "vspc_vmotions_total", outcome="complete") == 1
    assert refused(service, "takeover") == 0


async def test_connection_from_outside_allowed_sources_is_closed_at_accept(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    service = await start(tmp_path, nursery, allowed_sources=("127.0.0.1/32",))
    caplog.set_level(logging.WARNING, "vspc")
    with trio.fail_after(10):
        stranger = await raw_connect(service, "127.0.0.9")
        await closed_by_peer(stranger)
        vm = SimVM.random(random.Random(4))
        honest = await open_vm(service, nursery, vm)
        await honest.send_console(b"fine")
    assert refused(service, "source") == 1
    assert any(
        "127.0.0.9" in r.getMessage() and "allowed-sources" in r.getMessage()
        for r in caplog.records
    )
    assert len(service.board.connections()) == 1


def test_non_loopback_listener_needs_allowed_sources() -> None:
    from common.ops.config import ConfigError, loads
    from vspc.config import VspcConfig, address_allowed

    with pytest.raises(ConfigError) as e:
        loads(VspcConfig, '[listen]\nhost = "0.0.0.0"\n')
    assert e.value.key == "listen.allowed-sources"
    lc = loads(
        VspcConfig, '[listen]\nhost = "0.0.0.0"\nallowed-sources = ["10.1.0.0/16", "fd00::/8"]\n'
    ).listen
    nets = lc.source_networks()
    assert address_allowed("10.1.2.3", nets) and address_allowed("fd00::1", nets)
    assert address_allowed("::ffff:10.1.2.3", nets)
    assert not address_allowed("10.2.0.1", nets) and not address_allowed("127.0.0.1", nets)
    assert not address_allowed("relay:esx-01", nets)
    local = loads(VspcConfig, "[listen]\n").listen.source_networks()  # loopback default
    assert address_allowed("127.0.0.5", local) and address_allowed("::1", local)
    assert not address_allowed("10.0.0.1", local)


def test_source_of_a_relayed_stream_is_its_relay() -> None:
    from vspc.esx_listener import source_of

    assert source_of("10.0.0.5:40000") == "10.0.0.5"
    assert source_of("::1:40000") == "::1"
    assert source_of("relay:esx-01") == "relay:esx-01"  # one source per relay host


# ---- item 8: vMotion slots ----------------------------------------------------------


async def test_begin_flood_does_not_block_an_honest_vmotion(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    service = await start(tmp_path, nursery)
    rng = random.Random(5)
    anonymous = [
        await open_vm(
            service,
            nursery,
            SimVM.random(rng),
            source="127.0.0.2",
            known=known_without(tw.VM_VC_UUID, tw.GET_VM_VC_UUID),
            wait_identity=False,
        )
        for _ in range(70)
    ]
    for c in anonymous:  # no VM-VC-UUID: never holds a slot
        with pytest.raises(VMotionNotNow):
            await c.vmotion_begin(random_seq(rng))
    claimed = [
        await open_vm(service, nursery, SimVM.random(rng), source="127.0.0.3") for _ in range(12)
    ]
    answers = []
    for c in claimed:
        try:
            await c.vmotion_begin(random_seq(rng))
            answers.append("goahead")
        except VMotionNotNow:
            answers.append("notnow")
    assert answers == ["goahead"] * 8 + ["notnow"] * 4  # max-per-source = 8
    honest = await open_vm(service, nursery, SimVM.random(rng))
    m = await migrate(honest, HOST, service.esx_port or 0, nursery=nursery, rng=rng)
    await m.dest.send_console(b"moved")
    assert metric(service, "vspc_vmotions_total", outcome="complete") == 1


# ---- items 11, 12, 13: resource bounds ----------------------------------------------


async def test_flood_before_identity_then_close_is_reaped(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    service = await start(tmp_path, nursery)
    await trio.testing.wait_all_tasks_blocked()
    baseline = open_fds()
    blob = b"x" * (1 << 20) + b"y" * 65536
    for _ in range(20):
        s = await raw_connect(service)
        with trio.move_on_after(5):  # the vSPC stops reading (and closes) at its hold limit
            await s.send_all(blob)
        await s.aclose()
    await wait_until(lambda: not service.board.connections(), timeout=60)
    await trio.testing.wait_all_tasks_blocked()
    assert open_fds() <= baseline
    assert refused(service, "flood") == 20


async def test_client_that_never_reads_is_bounded_then_closed(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    service = await start(tmp_path, nursery, identify_timeout=1000.0)  # the stall closes it
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((HOST, service.esx_port))
    stream = trio.SocketStream(sock)
    await wait_until(lambda: len(service.board.connections()) == 1)
    (conn,) = service.board.connections()
    assert isinstance(conn, ServerConn)
    known = tw.ext(tw.KNOWN_SUBOPTIONS_1, bytes([tw.VM_VC_UUID, tw.VM_NAME]))
    burst = known * 8192  # 8 bytes in, ~40 out each
    sent = 0
    while sent < 16 << 20:
        with trio.move_on_after(1) as blocked:
            await stream.send_all(burst)
            sent += len(burst)
        if blocked.cancelled_caught:
            break
        # queued replies: the high water plus one read's worth (~5x its size)
        assert conn.out_pending() <= CONTROL_HIGH_WATER + 6 * READ_SIZE_BULK
    assert conn.out_pending() > 0  # it was really left unread
    assert sent < 16 << 20  # the vSPC stopped reading it: back-pressure
    await wait_until(lambda: not service.board.connections(), timeout=120)
    assert refused(service, "output") == 1
    await stream.aclose()


async def test_slowloris_closed_after_identify_timeout_honest_stays(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    service = await start(tmp_path, nursery, identify_timeout=10.0)
    vm = SimVM.random(random.Random(6))
    honest = await open_vm(service, nursery, vm)
    t0 = trio.current_time()
    slow = [await raw_connect(service) for _ in range(100)]
    for k, s in enumerate(slow):
        await s.send_all(b"\xff\xfb\x00" if k % 2 else b"a")  # a byte now and then, no UUID
    async with trio.open_nursery() as waiters:
        for s in slow:
            waiters.start_soon(closed_by_peer, s)
    assert trio.current_time() - t0 >= 10.0 - 1e-6
    assert refused(service, "identify_timeout") == 100
    assert not honest.closed.is_set()
    await honest.send_console(b"still here")
    assert service.board.carrier(PortKey(vm.canonical_uuid, DEFAULT_LABEL)) is not None


async def test_idle_but_alive_connection_survives_probes(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    service = await start(tmp_path, nursery, idle_probe=60.0, probe_timeout=5.0)
    vm = SimVM.random(random.Random(7))
    esx = await open_vm(service, nursery, vm)
    conn = server_conn(service, esx)
    assert conn.liveness is not None
    await wait_until(lambda: conn.liveness is not None and conn.liveness.answered >= 3, timeout=600)
    assert esx.timing_marks >= 3 and not esx.closed.is_set() and not esx.violations
    assert refused(service, "idle") == 0
    silent = await open_vm(
        service, nursery, SimVM.random(random.Random(8)), answer_timing_mark=False
    )
    await silent.wait_closed(timeout=120)  # dead (no answer): reaped
    assert refused(service, "idle") == 1 and not esx.closed.is_set()


# ---- item 9: wire text in logs ------------------------------------------------------


async def test_do_proxy_uri_with_newline_is_one_escaped_log_line(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    service = await start(tmp_path, nursery)
    caplog.set_level(logging.INFO, "vspc")
    forged = "vic-console\n2026-12-07 INFO vspc: port x: takeover\x1b[2J"
    with trio.fail_after(10):
        esx = await open_vm(service, nursery, SimVM.random(random.Random(9)), service_uri=forged)
        await esx.send_console(b"x")
        await wait_until(lambda: any("DO-PROXY" in r.getMessage() for r in caplog.records))
    lines = [r.getMessage() for r in caplog.records if "DO-PROXY" in r.getMessage()]
    assert len(lines) == 1
    assert "\n" not in lines[0] and "\x1b" not in lines[0]
    assert "vic-console\\n2026-12-07" in lines[0] and "\\x1b[2J" in lines[0]


async def test_peer_gone_seen_without_reading_past_queued_data() -> None:
    """What reaps a paused reader: the FIN is seen although data is still unread."""
    from vspc.esx_listener import peer_gone

    listeners = await trio.open_tcp_listeners(0, host=HOST)
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream(HOST, port)
    server = await listeners[0].accept()
    assert isinstance(server, trio.SocketStream)
    await client.send_all(b"unread" * 1000)
    assert not peer_gone(server)
    await client.aclose()
    # the kernel delivers the FIN on its own time
    await wait_until(lambda: peer_gone(server), 5, "the FIN seen", interval=0.001)
    assert await server.receive_some(6) == b"unread"  # the data was never consumed
    await server.aclose()
    await listeners[0].aclose()


async def test_telnetlib3_answers_the_liveness_probe(tmp_path: Path, nursery: trio.Nursery) -> None:
    """An independent Telnet client (telnetlib3, real time) answers DO TIMING-MARK:
    idle but alive, it survives probe after probe."""
    telnetlib3 = pytest.importorskip("telnetlib3")
    from tests.common.proto.test_telnet_interop import asyncio_thread

    service = await start(
        tmp_path, nursery, idle_probe=0.05, probe_timeout=10.0, identify_timeout=600.0
    )

    async def main(ready: object, stop: object) -> None:
        _reader, writer = await telnetlib3.open_connection(
            HOST, service.esx_port, encoding=False, connect_minwait=0.05, connect_maxwait=1.0
        )
        ready.set_result(None)  # type: ignore[attr-defined]
        await stop.wait()  # type: ignore[attr-defined]
        writer.close()

    with asyncio_thread(main) as (ready, _stop):
        await trio.to_thread.run_sync(ready.result, 15)
        await wait_until(lambda: len(service.board.connections()) == 1, timeout=15)
        (conn,) = service.board.connections()
        assert isinstance(conn, ServerConn) and conn.liveness is not None
        await wait_until(
            lambda: conn.liveness is not None and conn.liveness.answered >= 3, timeout=30
        )
        assert not conn.closing
    assert refused(service, "idle") == 0
