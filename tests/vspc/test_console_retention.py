"""Consoles of departed VMs are forgotten, their history stays on disk (issue 11, item 14).

* ``Retention`` (sans-IO): oldest first, after ``retention`` seconds or beyond
  ``max-departed``.
* The service: a console with a live connection or a client is never forgotten;
  a forgotten one, or one from before a restart, is listed and replayed from
  its log files.
* After a kill, the run marker gives every console that was connected a
  ``restart`` gap (``vspc.console.history``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from common.ops.config import ConfigError, build
from tests.support.waiting import wait_until
from vic.lab.esx_sim import EsxConnection, SimVM
from vspc.console import ConsoleConfig, history
from vspc.console import client as cc
from vspc.console.client import list_consoles
from vspc.console.eventlog import format_event
from vspc.console.retention import Retention
from vspc.core.identity import PortKey

from .conftest import start_vspc
from .test_console_support import (
    attach_client,
    endpoint,
    make_config,
    read_exactly,
    short_dir,
    start,
)

__all__ = ["short_dir"]


async def discard(data: bytes) -> None:
    """A VM input sink that drops what it gets."""


STEPS = st.lists(
    st.tuples(st.sampled_from(["departed", "returned", "due"]), st.integers(0, 5), st.floats(0, 5)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(steps=STEPS, seconds=st.floats(0, 10), max_departed=st.integers(0, 4))
def test_retention_forgets_oldest_first_and_keeps_the_bounds(
    steps: list[tuple[str, int, float]], seconds: float, max_departed: int
) -> None:
    r: Retention[int] = Retention(seconds, max_departed)
    model: dict[int, float] = {}
    now = 0.0
    for op, key, dt in steps:
        now += dt
        if op == "departed":
            r.departed(key, now)
            model.pop(key, None)
            model[key] = now
        elif op == "returned":
            r.returned(key)
            model.pop(key, None)
        else:
            due = r.due(now)
            order = sorted(model, key=lambda k: model[k])
            assert due == order[: len(due)]  # oldest first, a prefix
            for k in due:
                r.returned(k)
                del model[k]
            assert len(model) <= max_departed
            assert all(now - t < seconds for t in model.values())
        assert len(r) == len(model)


async def test_departed_consoles_go_and_serve_list_and_replay_from_disk(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    svc = await start(nursery, make_config(short_dir, max_departed=1))
    keys = [PortKey(f"{i:032x}", "serial0") for i in range(3)]
    for i, key in enumerate(keys):
        con = svc.open(key, f"vm-{i}")
        link = con.connect(discard)
        await con.from_vm(b"output of vm %d\n" % i)
        con.disconnect(link)
    await svc.writer.flush()
    await wait_until(lambda: len(svc.list()) == 1)
    assert [i.key for i in svc.list()] == [keys[2]]  # the newest departed stays
    listed = await list_consoles(endpoint(svc))
    assert [(c["display"], c["connected"], c.get("logged")) for c in listed] == [
        ("vm-0", False, 15),
        ("vm-1", False, 15),
        ("vm-2", False, None),
    ]
    # attach by name to one that was forgotten: its replay comes from its log file
    stream, status, buf = await attach_client(svc, "vm-0", mode="ro", replay=100)
    assert status["replay"] == 15 and status["connected"] is False
    with trio.fail_after(5):
        assert await read_exactly(stream, buf, 15) == b"output of vm 0\n"
    await stream.aclose()


async def test_a_console_with_a_client_or_a_connection_stays(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    svc = await start(nursery, make_config(short_dir, retention=0.0, max_departed=0))
    watched = svc.open(PortKey("a" * 32, "serial0"), "watched")
    live = svc.open(PortKey("b" * 32, "serial0"), "live")
    live.connect(discard)
    stream, _, _ = await attach_client(svc, "watched", mode="ro")
    link = watched.connect(discard)
    watched.disconnect(link)  # its VM went, its client did not
    gone = svc.open(PortKey("c" * 32, "serial0"), "gone")
    del gone
    await svc.writer.flush()
    await wait_until(lambda: len(svc.list()) == 2)
    assert {i.display for i in svc.list()} == {"watched", "live"}
    await stream.aclose()
    await wait_until(lambda: [i.display for i in svc.list()] == ["live"])


async def test_history_survives_a_restart(short_dir: Path) -> None:
    key = PortKey("d" * 32, "com1")
    data = bytes(range(256)) * 40  # more than the ring holds: replay is the tail

    async def first_run() -> None:
        async with trio.open_nursery() as n:
            svc = await start(n, make_config(short_dir))
            con = svc.open(key, "db-1")
            link = con.connect(discard)
            await con.from_vm(data)
            con.disconnect(link)
            n.cancel_scope.cancel()

    await first_run()
    async with trio.open_nursery() as n:
        svc = await start(n, make_config(short_dir))
        assert svc.list() == []
        listed = await list_consoles(endpoint(svc))
        assert [(c["uuid"], c["label"], c["display"], c["logged"]) for c in listed] == [
            (key.uuid, "com1", "db-1", len(data))
        ]
        stream, status, buf = await attach_client(svc, "db-1:com1", mode="ro", replay=1 << 20)
        assert status["replay"] == 4096  # the ring's size
        with trio.fail_after(5):
            assert await read_exactly(stream, buf, 4096) == data[-4096:]
        await stream.aclose()
        n.cancel_scope.cancel()


def test_unclean_stop_marks_a_restart_gap_for_connected_consoles(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    (d / "up.log").write_bytes(b"x" * 1234)
    (d / "up.events.jsonl").write_bytes(
        format_event("vm_connected", {}, 1.0) + b'{"event":"client_attach"'  # torn by the kill
    )
    (d / "down.events.jsonl").write_bytes(
        format_event("vm_connected", {}, 1.0) + format_event("vm_disconnected", {}, 2.0)
    )
    assert history.begin(d, 10.0) == []  # no marker: the last stop was clean
    assert history.begin(d, 20.0) == ["up"]  # the marker of a run that never stopped
    lines = (d / "up.events.jsonl").read_bytes().splitlines()
    gap = json.loads(lines[-2])
    assert (gap["event"], gap["offset"], gap["length"], gap["reason"]) == (
        "gap",
        1234,
        None,
        "restart",
    )
    assert json.loads(lines[-1])["event"] == "vm_disconnected"
    assert history.begin(d, 30.0) == []  # marked once: it is disconnected now
    history.end(d)
    assert not (d / history.MARKER).exists()


async def test_vm_churn_over_telnet_keeps_memory_bounded(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    service = await start_vspc(tmp_path, nursery, console={"max_departed": 3})
    rng = random.Random(14)
    with trio.fail_after(40):
        for i in range(12):
            vm = SimVM.random(rng, name=f"churn-{i}")
            esx = await EsxConnection.open(nursery, "127.0.0.1", service.esx_port or 0, vm=vm)
            await esx.send_console(b"up %d\n" % i)
            await wait_until(
                lambda: service.consoles.writer.total == 0 and len(service._links) == 1
            )
            await esx.aclose()
            await wait_until(lambda: not service._links)
        await service.consoles.writer.flush()
        await wait_until(lambda: len(service.consoles.list()) == 3)
    assert service._displays == {} and service.board.ports() == []
    assert {i.display for i in service.consoles.list()} == {"churn-9", "churn-10", "churn-11"}
    listed = await list_consoles(cc.Endpoint(socket=service.config.console.socket))
    assert len(listed) == 12  # the rest from their log files


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"retention": -1.0}, "console.retention"),
        ({"retention": "1d"}, "console.retention"),
        ({"max-departed": -1}, "console.max-departed"),
        ({"log-hold-bytes": -1}, "console.log-hold-bytes"),
    ],
)
def test_bad_console_keys_are_named(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        build(ConsoleConfig, table, "console")
    assert e.value.key == key


def test_console_key_defaults() -> None:
    c = build(ConsoleConfig, {}, "console")
    assert (c.retention, c.max_departed, c.log_hold_bytes) == (86400.0, 1000, 4 * 1024 * 1024)


@pytest.mark.parametrize("written", [True, False])
async def test_a_vm_back_after_a_restart_replays_its_history_first(
    short_dir: Path, written: bool
) -> None:
    key = PortKey("e" * 32, "serial0")
    old, new = b"A" * 1000 + b"Z" * 2000, b"B" * 500

    async with trio.open_nursery() as n:
        svc = await start(n, make_config(short_dir))
        await svc.open(key, "app").from_vm(old)
        n.cancel_scope.cancel()
    async with trio.open_nursery() as n:
        svc = await start(n, make_config(short_dir))
        con = svc.open(key, "app")
        con.connect(discard)
        await con.from_vm(new)
        if written:  # this run's bytes already in the file (they are cut off the history)
            await svc.writer.flush()
        stream, status, buf = await attach_client(svc, "app", mode="ro", replay=1 << 20)
        assert status["replay"] == len(old) + len(new)
        with trio.fail_after(5):
            assert await read_exactly(stream, buf, len(old) + len(new)) == old + new
        await con.from_vm(b"live")
        with trio.fail_after(5):
            assert await read_exactly(stream, buf, 4) == b"live"
        await stream.aclose()
        n.cancel_scope.cancel()
