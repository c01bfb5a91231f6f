"""Attach over a real Unix socket: replay exactness, fan-out, modes, input, lookup."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vspc.console import ConsoleService, LookupFailed
from vspc.console.client import ConsoleClientError, list_consoles
from vspc.console.endpoint import EndpointError
from vspc.core.identity import PortKey
from vspc.metrics import VspcMetrics

from .test_console_support import (
    KEY,
    UUID_RAW,
    attach_client,
    endpoint,
    make_config,
    pattern,
    read_exactly,
    short_dir,
    start,
)

__all__ = ["short_dir"]

SENTINEL = b"<<end-of-test>>"


async def discard(data: bytes) -> None:
    """A VM input sink that drops what it gets."""


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.lists(st.integers(0, 700), max_size=8),
    after=st.lists(st.integers(0, 700), max_size=8),
    replay=st.integers(0, 3000),
    ring=st.integers(0, 1500),
)
def test_replay_then_live_is_exact(
    short_dir: Path, before: list[int], after: list[int], replay: int, ring: int
) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            svc = await start(nursery, make_config(short_dir, ring_bytes=ring, log_dir=None))
            con = svc.open(KEY, "vm")
            pos = 0
            written = b""
            for n in before:
                chunk = pattern(pos, n)
                pos += n
                written += chunk
                await con.from_vm(chunk)
            stream, status, buf = await attach_client(svc, UUID_RAW, replay=replay)
            want_replay = written[len(written) - min(replay, ring, len(written)) :]
            assert status["replay"] == len(want_replay)
            live = b""
            for n in after:
                chunk = pattern(pos, n)
                pos += n
                live += chunk
                await con.from_vm(chunk)
            await con.from_vm(SENTINEL)
            expected = want_replay + live + SENTINEL
            with trio.fail_after(10):
                got = await read_exactly(stream, buf, len(expected))
            assert got == expected
            assert not buf
            await stream.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


async def test_attach_while_vm_is_writing_has_no_gap_or_duplicate(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    svc = await start(nursery, make_config(short_dir, ring_bytes=1 << 20, log_dir=None))
    con = svc.open(KEY, "vm")
    total = 200_000
    attached = trio.Event()
    results: list[tuple[dict[str, object], bytes]] = []

    async def vm() -> None:
        for pos in range(0, total, 1000):
            await con.from_vm(pattern(pos, 1000))
            await trio.lowlevel.checkpoint()

    async def client(i: int) -> None:
        for _ in range(i * 7):
            await trio.lowlevel.checkpoint()
        stream, status, buf = await attach_client(svc, "vm", replay=1 << 20)
        attached.set()
        # everything from the start: the replay covers what came before the attach
        with trio.fail_after(20):
            got = await read_exactly(stream, buf, total)
        results.append((status, got))
        await stream.aclose()

    async with trio.open_nursery() as n:
        n.start_soon(vm)
        for i in range(4):
            n.start_soon(client, i)
    want = pattern(0, total)
    assert len(results) == 4
    for _status, got in results:
        assert got == want


async def test_several_clients_get_everything(short_dir: Path, nursery: trio.Nursery) -> None:
    svc = await start(nursery, make_config(short_dir))
    con = svc.open(KEY, "vm-two")
    await con.from_vm(b"boot\r\n")
    clients = [await attach_client(svc, "vm-two", mode="ro", replay=100) for _ in range(5)]
    assert svc.metrics.console_clients._value.get() == 5
    assert [c.clients for c in svc.list()] == [5]
    await con.from_vm(b"login: ")
    for stream, status, buf in clients:
        assert status["mode"] == "ro" and status["display"] == "vm-two"
        with trio.fail_after(5):
            assert await read_exactly(stream, buf, 13) == b"boot\r\nlogin: "
        await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert svc.metrics.console_clients._value.get() == 0
    assert [c.clients for c in svc.list()] == [0]


async def test_exclusive_write(short_dir: Path, nursery: trio.Nursery) -> None:
    svc = await start(nursery, make_config(short_dir))
    svc.open(KEY, "vm")
    ex, status, _ = await attach_client(svc, "vm", mode="exclusive")
    assert status["mode"] == "exclusive"
    for mode in ("rw", "exclusive"):
        with pytest.raises(ConsoleClientError, match="exclusive"):
            await attach_client(svc, "vm", mode=mode)
    ro, _, _ = await attach_client(svc, "vm", mode="ro")
    await ex.aclose()
    await trio.testing.wait_all_tasks_blocked()
    rw, _, _ = await attach_client(svc, "vm", mode="rw")
    rw2, _, _ = await attach_client(svc, "vm", mode="rw")  # rw writers share
    with pytest.raises(ConsoleClientError, match="writers are attached"):
        await attach_client(svc, "vm", mode="exclusive")
    for s in (ro, rw, rw2):
        await s.aclose()


async def test_input_reaches_the_sink_only_from_writers(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    svc = await start(nursery, make_config(short_dir))
    con = svc.open(KEY, "vm")
    got = bytearray()
    arrived = trio.Event()

    async def sink(data: bytes) -> None:
        got.extend(data)
        if got.endswith(b"\r"):
            arrived.set()

    rw, _, rw_buf = await attach_client(svc, "vm", mode="rw")
    ro, _, ro_buf = await attach_client(svc, "vm", mode="ro")
    # not connected yet: input is discarded with a notice
    await rw.send_all(b"early")
    with trio.fail_after(5):
        line = await read_exactly(
            rw, rw_buf, len(b"\r\n[vic console: VM not connected; 5 bytes discarded]\r\n")
        )
    assert line == b"\r\n[vic console: VM not connected; 5 bytes discarded]\r\n"
    con.connect(sink)
    for s, b in ((rw, rw_buf), (ro, ro_buf)):
        with trio.fail_after(5):
            assert await read_exactly(s, b, len(b"\r\n[vic console: VM connected]\r\n")) == (
                b"\r\n[vic console: VM connected]\r\n"
            )
    await ro.send_all(b"nope\r")
    with trio.fail_after(5):
        line = await read_exactly(
            ro, ro_buf, len(b"\r\n[vic console: read-only: input discarded]\r\n")
        )
    assert b"read-only" in line
    await rw.send_all(b"ls -l\xff\x00\r")
    with trio.fail_after(5):
        await arrived.wait()
    assert bytes(got) == b"ls -l\xff\x00\r"
    assert con.info().bytes_to_vm == len(got)
    await rw.aclose()
    await ro.aclose()


async def test_lookup_by_uuid_display_prefix_and_label(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    svc = await start(nursery, make_config(short_dir))
    a0 = svc.open(KEY, "web-1")
    a1 = svc.open(PortKey(KEY.uuid, "com2"), "web-1")
    b = svc.open(PortKey.from_raw("4200ffee"), "web-2")
    assert svc.open(KEY, "") is a0  # idempotent
    assert svc.find(UUID_RAW) is a0  # default label preferred
    assert svc.find(KEY.uuid.upper()) is a0
    assert svc.find("421d2a3b") is a0  # unique uuid prefix
    assert svc.find("web-1", "com2") is a1
    assert svc.find("web-1:com2") is a1
    assert svc.find("4200") is b
    assert svc.find("web-2") is b
    with pytest.raises(LookupFailed, match="ambiguous"):
        svc.find("web-")
    with pytest.raises(LookupFailed, match="ambiguous"):
        svc.find("42")
    with pytest.raises(LookupFailed, match="no console"):
        svc.find("db-1")
    with pytest.raises(ConsoleClientError, match="no console"):
        await attach_client(svc, "db-1")
    # label-only ports: ask for a label
    svc.open(PortKey.from_raw("aa", "x"), "multi")
    svc.open(PortKey.from_raw("aa", "y"), "multi")
    with pytest.raises(LookupFailed, match="several ports"):
        svc.find("multi")


async def test_list_and_socket_mode(short_dir: Path, nursery: trio.Nursery) -> None:
    svc = await start(nursery, make_config(short_dir, socket_mode=0o600))
    sock = short_dir / "c.sock"
    st_ = os.stat(sock)
    assert stat.S_ISSOCK(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o600
    con = svc.open(KEY, UUID_RAW)
    con.connect(discard)
    await con.from_vm(b"12345")
    consoles = await list_consoles(endpoint(svc))
    assert consoles[0].pop("last_seen")  # now, while connected (vic console list: "now")
    assert consoles == [
        {
            "uuid": KEY.uuid,
            "label": "serial0",
            "display": UUID_RAW,
            "connected": True,
            "bytes": 5,
            "bytes_to_vm": 0,
            "clients": 0,
            "origin": "",
            "attached": [],
        }
    ]


async def test_garbage_request_closes_only_that_connection(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    svc = await start(nursery, make_config(short_dir))
    con = svc.open(KEY, "vm")
    good, _, buf = await attach_client(svc, "vm")
    bad = await trio.open_unix_socket(str(short_dir / "c.sock"))
    await bad.send_all(b"\x00\xff garbage\n")
    with trio.fail_after(5):
        answer = b""
        while chunk := await bad.receive_some(1000):
            answer += chunk
    assert json.loads(answer)["ok"] is False
    huge = await trio.open_unix_socket(str(short_dir / "c.sock"))
    with trio.fail_after(5):
        try:
            while True:
                await huge.send_all(b"x" * 65536)  # no newline, ever
        except trio.BrokenResourceError:
            pass
    await con.from_vm(b"still here")
    with trio.fail_after(5):
        assert await read_exactly(good, buf, 10) == b"still here"


async def test_second_service_refuses_a_live_socket(short_dir: Path, nursery: trio.Nursery) -> None:
    await start(nursery, make_config(short_dir))
    other = ConsoleService(make_config(short_dir), VspcMetrics.create())
    with pytest.raises(EndpointError, match="in use"):
        await nursery.start(other.run)


async def test_client_stays_attached_across_vm_reconnects(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    svc = await start(nursery, make_config(short_dir))
    con = svc.open(KEY, "vm")
    inputs: list[tuple[str, bytes]] = []
    got = trio.Event()

    def sink_for(host: str):  # type: ignore[no-untyped-def]
        async def sink(data: bytes) -> None:
            inputs.append((host, data))
            got.set()

        return sink

    link = con.connect(sink_for("esx-a"))
    stream, _, buf = await attach_client(svc, "vm")
    await con.from_vm(b"before;")
    # reconnect: same key, same Console, the client is not dropped and is told
    con.disconnect(link)
    assert svc.open(KEY, "vm") is con
    con.connect(sink_for("esx-b"))
    await con.from_vm(b"after")
    expect = (
        b"before;\r\n[vic console: VM disconnected]\r\n\r\n[vic console: VM connected]\r\nafter"
    )
    with trio.fail_after(5):
        assert await read_exactly(stream, buf, len(expect)) == expect
        await stream.send_all(b"k")
        await got.wait()
    assert inputs == [("esx-b", b"k")]
    await stream.aclose()
