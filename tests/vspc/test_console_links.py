"""A port's input goes to its newest live VM connection; no VM, no buffering (issue 11, 3 and 15).

* Streams for one port overlap and end in any order: keystrokes always reach
  the newest live one, and the console is connected while any is live.
* Keys typed with no VM connected are discarded with a notice to the typist,
  never delivered to a later connection; attached clients are told when the VM
  goes and comes back.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from common.proto.console import protocol as proto
from common.proto.link.header import OriginHeader, encode_header
from tests.support.waiting import wait_until
from vic.lab.esx_sim import EsxConnection, SimVM
from vspc.config import EndpointConfig
from vspc.console import ConsoleService
from vspc.console import client as cc
from vspc.console.hub import Link
from vspc.endpoint import Endpoint
from vspc.metrics import VspcMetrics
from vspc.service import VspcService

from .conftest import attach_console, make_config, metric, read_exactly
from .test_console_support import KEY, attach_client, endpoint, short_dir, start
from .test_console_support import make_config as console_config
from .test_console_support import read_exactly as read_buffered

__all__ = ["short_dir"]

CONNECTED = b"\r\n[vic console: VM connected]\r\n"
DISCONNECTED = b"\r\n[vic console: VM disconnected]\r\n"


def discarded(n: int) -> bytes:
    return f"\r\n[vic console: VM not connected; {n} bytes discarded]\r\n".encode()


OPS = st.lists(st.one_of(st.just("connect"), st.integers(0, 7)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_input_goes_to_the_newest_live_connection(ops: list[str | int]) -> None:
    """Model: a list of live connections; an int ends the live one at that index (mod n)."""

    async def main() -> None:
        service = ConsoleService(
            console_config(Path("/nonexistent"), log_dir=None), VspcMetrics.create()
        )
        con = service.open(KEY, "vm")
        got: list[tuple[int, bytes]] = []
        live: list[tuple[int, Link]] = []
        typist = con.attach("rw", 0)
        for i, op in enumerate(ops):
            if op == "connect":

                async def sink(data: bytes, me: int = i) -> None:
                    got.append((me, data))

                live.append((i, con.connect(sink)))
            elif live:
                assert isinstance(op, int)
                _, link = live.pop(op % len(live))
                con.disconnect(link)
            assert con.connected == bool(live)
            got.clear()
            before = typist.queued
            await con.from_client(typist, b"k%d" % i)
            if live:
                assert got == [(live[-1][0], b"k%d" % i)]
            else:
                assert got == []
                assert typist.queued - before == len(discarded(len(b"k%d" % i)))

    trio.run(main)


async def test_notices_and_no_delivery_to_a_later_connection(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    svc = await start(nursery, console_config(short_dir))
    con = svc.open(KEY, "vm")
    stream, _, buf = await attach_client(svc, "vm")
    ro, _, ro_buf = await attach_client(svc, "vm", mode="ro")
    await stream.send_all(b"secret\r")
    with trio.fail_after(5):
        assert await read_buffered(stream, buf, len(discarded(7))) == discarded(7)
    got: list[bytes] = []
    arrived = trio.Event()

    async def sink(data: bytes) -> None:
        got.append(data)
        arrived.set()

    link = con.connect(sink)
    await stream.send_all(b"ls\r")
    with trio.fail_after(5):
        await arrived.wait()
    assert got == [b"ls\r"]  # nothing typed before the connection came
    con.disconnect(link)
    with trio.fail_after(5):
        for s, b in ((stream, buf), (ro, ro_buf)):
            want = CONNECTED + DISCONNECTED
            assert await read_buffered(s, b, len(want)) == want
    await stream.aclose()
    await ro.aclose()


async def test_a_client_without_notices_gets_the_vms_bytes_only(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    svc = await start(nursery, console_config(short_dir))
    con = svc.open(KEY, "vm")
    stream, _status, rest = await cc.attach(
        endpoint(svc), proto.AttachRequest("vm", mode="ro", notices=False)
    )
    buf = bytearray(rest)
    link = con.connect(discard)
    await con.from_vm(b"one;")
    con.disconnect(link)
    con.connect(discard)
    await con.from_vm(b"two")
    with trio.fail_after(5):
        assert await read_buffered(stream, buf, 7) == b"one;two"
    await stream.aclose()


async def discard(data: bytes) -> None:
    """A VM input sink that drops what it gets."""


# ---- through the real endpoint: relayed raw streams --------------------------------


async def raw_stream(sock: Path, vm: str = "vm-raw") -> trio.SocketStream:
    s = await trio.open_unix_socket(str(sock))
    await s.send_all(encode_header(OriginHeader(host="esx-a", vm=vm, kind="tcp", label="com1")))
    return s


async def test_a_short_stream_does_not_cut_the_connected_vms_input(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    config = replace(make_config(tmp_path), endpoint=EndpointConfig(unix=tmp_path / "ep.sock"))
    service: VspcService = await nursery.start(VspcService(config).run)
    await nursery.start(Endpoint(service).run)
    ep = cc.Endpoint(socket=service.config.console.socket)

    async def connected() -> bool:
        return bool(
            [c["connected"] for c in await cc.list_consoles(ep) if c["display"] == "vm-raw"]
            == [True]
        )

    with trio.fail_after(20):
        vm_a = await raw_stream(tmp_path / "ep.sock")
        await vm_a.send_all(b"boot\n")
        await wait_until(lambda: metric(service, "vspc_connected_vms") == 1)
        client = await attach_console(service, "vm-raw", mode="rw", replay=0)
        # a second, short stream for the same port comes and goes
        vm_b = await raw_stream(tmp_path / "ep.sock")
        await vm_b.send_all(b"x")
        await client.send_all(b"to-b")
        assert await read_exactly(vm_b, 4) == b"to-b"  # the newest live one has the input
        await vm_b.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert await connected()
        assert metric(service, "vspc_connected_vms") == 1
        await client.send_all(b"whoami\r")
        assert await read_exactly(vm_a, 7) == b"whoami\r"  # the VM connected before it gets it back
        await vm_a.aclose()
        await wait_until(lambda: metric(service, "vspc_connected_vms") == 0)
        assert not await connected()
        await client.aclose()


# ---- over Telnet: keys typed while the VM is away are not delivered later ----------


async def test_telnet_vm_away_discards_input_and_tells_clients(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    service: VspcService = await nursery.start(VspcService(make_config(tmp_path)).run)
    vm = SimVM.random(random.Random(15))
    with trio.fail_after(20):
        esx = await EsxConnection.open(nursery, "127.0.0.1", service.esx_port or 0, vm=vm)
        await esx.send_console(b"login: ")
        client = await attach_console(service, vm.canonical_uuid, mode="rw", replay=100)
        assert await read_exactly(client, 7) == b"login: "
        await esx.aclose()
        assert await read_exactly(client, len(DISCONNECTED)) == DISCONNECTED
        await client.send_all(b"hunter2\r")
        assert await read_exactly(client, len(discarded(8))) == discarded(8)
        esx = await EsxConnection.open(nursery, "127.0.0.1", service.esx_port or 0, vm=vm)
        assert await read_exactly(client, len(CONNECTED)) == CONNECTED
        await client.send_all(b"id\r")
        assert await esx.receive_console_exactly(3) == b"id\r"  # and nothing typed before
        await trio.testing.wait_all_tasks_blocked()
        assert esx.console_pending() == b""
        await esx.aclose()
        await client.aclose()
