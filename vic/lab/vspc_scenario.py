"""Lab scenario 1: simulated ESX hosts speak Telnet + option 232 to the vSPC.

Several VMs write console output exactly as ESX does (negotiation, the 232
handshake, one VM one byte per segment); one VM is vMotioned from esx-a to
esx-b mid-stream while someone types into its console, and one migration
aborts. Every console is read through the real attach socket from its first byte.
"""

from __future__ import annotations

import random

import trio

from common.proto.console import protocol as proto
from vic.lab.esx_sim import EsxConnection, SimVM, migrate, random_seq
from vic.lab.polling import wait_until
from vic.lab.report import ConsoleCheck
from vspc.console import client as cc
from vspc.core.identity import PortKey
from vspc.service import VspcService

LABEL = "com1"


class Gate:
    """Lets a writer pause while its VM is paused for vMotion."""

    def __init__(self) -> None:
        self._open = trio.Event()
        self._open.set()

    def close(self) -> None:
        self._open = trio.Event()

    def open(self) -> None:
        self._open.set()

    async def wait(self) -> None:
        await self._open.wait()


def console_text(rng: random.Random, name: str, i: int) -> bytes:
    words = ["boot", "eth0", "link up", "dhcp", "tether", "ok", "\x1b[32mready\x1b[0m"]
    line = f"[{name}] {i:05d} " + " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
    data = line.encode() + b"\r\n"
    if rng.random() < 0.1:
        data += bytes([0xFF, 0x00, 0x0D, 0x11])  # 8-bit clean: IAC, NUL, CR, XON
    return data


async def attach_rw(service: VspcService, vm: SimVM) -> tuple[trio.abc.Stream, bytes]:
    """Attach read-write with full replay once the console exists."""
    key = PortKey(vm.canonical_uuid, LABEL)
    with trio.fail_after(10):
        await wait_until(lambda: service.consoles.get(key) is not None)
    ep = cc.Endpoint(socket=service.config.console.socket)
    stream, _status, rest = await cc.attach(
        ep,
        proto.AttachRequest(
            vm=vm.canonical_uuid, label=LABEL, mode="rw", replay=1 << 20, notices=False
        ),
    )
    return stream, rest


async def reader(stream: trio.abc.Stream, check: ConsoleCheck) -> None:
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        check.received += chunk


async def writer(ref: list[EsxConnection], check: ConsoleCheck, lines: int, gate: Gate) -> None:
    rng = random.Random(check.name)
    for i in range(lines):
        await gate.wait()
        data = console_text(rng, check.name, i)
        await ref[0].send_console(data)
        check.sent += data
        await trio.sleep(0.002)


async def run(service: VspcService, *, seed: int, lines: int) -> list[ConsoleCheck]:
    rng = random.Random(seed)
    host, port = "127.0.0.1", service.esx_port
    assert port is not None
    specs = {
        "web-1": {},
        "db-1": {"one_byte_segments": True},
        "mover": {},
        "stayer": {},
    }
    checks = {
        n: ConsoleCheck(n, "esx-a -> vSPC" + (" (1 byte/segment)" if k else ""))
        for n, k in specs.items()
    }
    async with trio.open_nursery() as nursery:
        vms = {n: SimVM.random(rng, n) for n in specs}
        conns: dict[str, list[EsxConnection]] = {}
        streams: dict[str, trio.abc.Stream] = {}
        for name, knobs in specs.items():
            conn = await EsxConnection.open(
                nursery,
                host,
                port,
                vm=vms[name],
                label=LABEL,
                **knobs,  # type: ignore[arg-type]
            )
            conns[name] = [conn]
            await conns[name][0].send_console(b"")
        gates = {n: Gate() for n in specs}
        for name in specs:
            streams[name], rest = await attach_rw(service, vms[name])
            checks[name].received += rest
            nursery.start_soon(reader, streams[name], checks[name])
        async with trio.open_nursery() as writers:
            for name in specs:
                writers.start_soon(writer, conns[name], checks[name], lines, gates[name])
            await trio.sleep(0.1)
            await _migrate(
                vms["mover"],
                conns["mover"],
                checks["mover"],
                streams["mover"],
                gates["mover"],
                host,
                port,
                rng,
                nursery,
            )
            await _aborted(conns["stayer"][0], checks["stayer"], rng)
        with trio.move_on_after(10):
            await wait_until(lambda: all(len(c.received) >= len(c.sent) for c in checks.values()))
        for ref in conns.values():
            await ref[0].aclose()
        nursery.cancel_scope.cancel()
    return list(checks.values())


async def _migrate(
    vm: SimVM,
    ref: list[EsxConnection],
    check: ConsoleCheck,
    typist: trio.abc.Stream,
    gate: Gate,
    host: str,
    port: int,
    rng: random.Random,
    nursery: trio.Nursery,
) -> None:
    before = b"uname -a\r"
    check.typed += before
    await typist.send_all(before)
    check.typed_seen += await ref[0].receive_console_exactly(len(before))
    seq = random_seq(rng, with_ff=True)
    src = ref[0]
    gate.close()  # the VM is paused from BEGIN on
    m = await migrate(
        src, host, port, nursery=nursery, seq=seq, rng=rng, complete=False, close_source=False
    )
    during = b"echo typed-during-vmotion\r"
    check.typed += during
    await typist.send_all(during)  # held by the vSPC, flushed to esx-b at COMPLETE
    await m.dest.vmotion_complete(seq)
    ref[0] = m.dest
    await src.aclose()
    gate.open()
    with trio.fail_after(10):
        check.typed_seen += await m.dest.receive_console_exactly(len(during))
    check.path = "esx-a => esx-b -> vSPC"
    check.events.append(
        f"vMotion esx-a -> esx-b, seq {seq.hex()} (secret {len(m.secret)} bytes): complete; "
        "input typed while paused reached esx-b"
    )


async def _aborted(src: EsxConnection, check: ConsoleCheck, rng: random.Random) -> None:
    seq = random_seq(rng, with_ff=True)
    await src.vmotion_begin(seq)
    # the destination never comes up: the source aborts and the VM runs on at esx-a
    await src.vmotion_abort()
    check.events.append(f"vMotion esx-a -> esx-b, seq {seq.hex()}: aborted, VM stayed on esx-a")
