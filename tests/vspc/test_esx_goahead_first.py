"""GOAHEAD written before the switchboard keeps its books (vspc.esx_events'
``_goahead_first``): on a plain socket with nothing queued the answer leaves at once,
without a checkpoint; everything else (a TLS or relayed stream, bytes queued) takes
the ordinary path. The port's events, the metrics and the answers stay what they were,
parked or not, in order per port."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.support.waiting import wait_until
from vic.lab.esx_errors import VMotionNotNow
from vic.lab.esx_sim import EsxConnection, SimVM, migrate, random_seq
from vspc.console.logfile import file_stem
from vspc.core.identity import DEFAULT_LABEL, PortKey
from vspc.esx_conn import EsxConnection as VspcConn
from vspc.esx_parking import ENV
from vspc.service import VspcService

from .conftest import metric, start_vspc


def _conn_on_socketpair() -> tuple[VspcConn, socket.socket]:
    ours, theirs = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    conn = VspcConn(stream, "test", lambda direction, uri: True)
    conn._sock = stream.socket  # as run() sets it
    return conn, theirs


async def test_answer_at_once_writes_without_a_checkpoint(nursery: trio.Nursery) -> None:
    conn, esx = _conn_on_socketpair()
    conn._nursery = nursery
    assert conn.answer_at_once(b"GOAHD")  # synchronous: on the wire already
    assert esx.recv(100) == b"GOAHD"
    conn.send_console(b"console")  # queued (a writer task is started for it)
    assert not conn.answer_at_once(b"late")  # would overtake it: not here
    esx.close()


async def test_answer_at_once_hands_the_cpu_over_once_sent(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    yields: list[int] = []
    monkeypatch.setattr("vspc.esx_parking.os.sched_yield", lambda: yields.append(1))
    conn, esx = _conn_on_socketpair()
    conn._nursery = nursery
    assert conn.answer_at_once(b"GOAHD")
    assert yields == [1] and esx.recv(100) == b"GOAHD"
    conn.send_console(b"console")
    assert not conn.answer_at_once(b"late")  # nothing sent: nobody woken
    assert yields == [1]
    esx.close()


async def test_answer_at_once_not_on_a_wrapped_stream(nursery: trio.Nursery) -> None:
    ours, _esx = trio.testing.memory_stream_pair()
    conn = VspcConn(ours, "test", lambda direction, uri: True)
    conn._nursery = nursery
    assert not conn.answer_at_once(b"GOAHD")  # (TLS, relayed: the stream's own send)


def _events(service: VspcService, key: PortKey) -> list[str]:
    log_dir = service.config.console.log_dir
    assert log_dir is not None
    path = log_dir / f"{file_stem(key)}.events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def _vmotion_events(service: VspcService, key: PortKey) -> list[str]:
    return [e for e in _events(service, key) if e.startswith("vmotion_")]


@pytest.mark.parametrize("park", ["1", "0"])
async def test_migrations_answered_first_keep_their_books(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, park: str
) -> None:
    monkeypatch.setenv(ENV, park)
    vspc = await start_vspc(tmp_path, nursery)
    port = vspc.esx_port
    assert port is not None
    rng = random.Random(21)
    vm = SimVM.random(rng)
    key = PortKey(vm.canonical_uuid, DEFAULT_LABEL)  # (no DO-PROXY label)
    with trio.fail_after(30):
        src = await EsxConnection.open(nursery, "127.0.0.1", port, vm=vm)
        for _ in range(3):
            m = await migrate(src, "127.0.0.1", port, nursery=nursery, rng=rng)
            assert not src.violations and not m.dest.violations
            await trio.testing.wait_all_tasks_blocked()
            src = m.dest
        # a BEGIN the board refuses: NOTNOW by the ordinary path, nothing written first
        seq = random_seq(rng, with_ff=True)
        await src.vmotion_begin(seq)
        with pytest.raises(VMotionNotNow):
            await src.vmotion_begin(random_seq(rng))
        await src.vmotion_abort()
        want = ["vmotion_begin", "vmotion_peer", "vmotion_complete"] * 3
        want += ["vmotion_begin", "vmotion_notnow", "vmotion_abort"]
        await wait_until(lambda: len(_vmotion_events(vspc, key)) >= len(want), what="events")
    assert _vmotion_events(vspc, key) == want
    assert metric(vspc, "vspc_vmotion_begin_to_goahead_seconds_count") == 4
    assert metric(vspc, "vspc_vmotions_total", outcome="complete") == 3
    assert metric(vspc, "vspc_vmotions_total", outcome="notnow") == 1
    assert not src.violations
