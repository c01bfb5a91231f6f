"""Lab scenario 2: relays between the simulated VMs and the appliance.

Two relay daemons (esx-a, esx-b) run in this process, each forwarding to the
appliance endpoint with the origin header. Simulated VMs use every ingress kind
the machine can carry: network serial as raw TCP (ESX connecting in, and the
relay connecting out), pipe-backed serial (relay listening, relay connecting,
FIFO pair), a pty serial line, hybrid vsock, and vSPC Telnet passed through
untouched, including a vMotion from esx-a's relay to esx-b's. Each console is
read through the real attach socket; bytes typed into it must reach the VM.
"""

from __future__ import annotations

import os
import random
import tty
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
import trio.lowlevel

from common.io.unixlisten import open_unix_listener
from common.proto.console import protocol as proto
from relay.config import (
    EgressConfig,
    HvsockListener,
    MetricsConfig,
    PipeListener,
    RelayConfig,
    SerialListener,
    TcpListener,
    VspcListener,
)
from relay.daemon import RelayDaemon
from vic.lab.esx_sim import EsxConnection, SimVM, migrate, random_seq
from vic.lab.polling import wait_until
from vic.lab.report import ConsoleCheck
from vic.lab.vspc_scenario import Gate, console_text
from vspc.console import client as cc
from vspc.core.identity import PortKey
from vspc.endpoint import Endpoint
from vspc.service import VspcService

Opener = Callable[[], Awaitable[trio.abc.Stream]]


def relay_config(
    host: str, endpoint_sock: Path, listeners: dict[str, tuple[object, ...]]
) -> RelayConfig:
    return RelayConfig(
        host=host,
        egress={"default": EgressConfig(kind="unix", path=endpoint_sock)},
        metrics=MetricsConfig(enabled=False),
        **listeners,  # type: ignore[arg-type]
    )


async def attach(service: VspcService, key: PortKey) -> tuple[trio.abc.Stream, bytes]:
    with trio.fail_after(10):
        await wait_until(lambda: service.consoles.get(key) is not None)
    ep = cc.Endpoint(socket=service.config.console.socket)
    stream, _status, rest = await cc.attach(
        ep,
        proto.AttachRequest(vm=key.uuid, label=key.label, mode="rw", replay=1 << 20, notices=False),
    )
    return stream, rest


async def pump_into(stream: trio.abc.Stream, buf: bytearray) -> None:
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        if not chunk:
            return
        buf += chunk


async def raw_vm(
    service: VspcService,
    check: ConsoleCheck,
    key: PortKey,
    stream: trio.abc.Stream,
    lines: int,
    *,
    on_line: Callable[[int], None] | None = None,
    before_typing: trio.Event | None = None,
    typed: bytes = b"",
) -> None:
    """A raw serial/vsock VM: writes console lines, then reads what is typed.
    ``on_line(i)`` after each line; typing waits for ``before_typing``."""
    vm_in = bytearray()
    async with trio.open_nursery() as n:
        n.start_soon(pump_into, stream, vm_in)
        rng = random.Random(check.name)
        first = console_text(rng, check.name, 0)
        await stream.send_all(first)
        check.sent += first
        console, rest = await attach(service, key)
        check.received += rest
        n.start_soon(pump_into, console, check.received)
        for i in range(1, lines):
            data = console_text(rng, check.name, i)
            await stream.send_all(data)
            check.sent += data
            if on_line is not None:
                on_line(i)
            await trio.sleep(0.002)
        if before_typing is not None:
            await before_typing.wait()
        typed = typed or f"hello {check.name}\r".encode() + b"\xff\x00"
        check.typed += typed
        await console.send_all(typed)
        with trio.move_on_after(20):
            await wait_until(
                lambda: len(vm_in) >= len(typed) and len(check.received) >= len(check.sent)
            )
        check.typed_seen += vm_in
        n.cancel_scope.cancel()
    await trio.aclose_forcefully(stream)


class _VmEnds:
    """The VM side of every raw ingress kind: what listens before the relay starts,
    and one opener per kind (a VM's end of its serial line)."""

    def __init__(self, d: Path) -> None:
        self.d = d
        self.fifo_base = d / "vm-fifo"
        self.relay_bound: dict[str, tuple[str, int]] = {}  # relay esx-a's listeners, once up

    async def listen(self) -> None:
        """The VM side of the "client" kinds listens before the relay starts."""
        self.tcp_listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        self.tcp_port: int = self.tcp_listener.socket.getsockname()[1]
        self.pipe_path = self.d / "vm-pipe-server.sock"
        self.pipe_listener = await open_unix_listener(self.pipe_path, mode=None, backlog=16)
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.slave_path = os.ttyname(self.slave)
        os.mkfifo(f"{self.fifo_base}.in")
        os.mkfifo(f"{self.fifo_base}.out")

    async def aclose(self) -> None:
        os.close(self.master)
        os.close(self.slave)
        await self.tcp_listener.aclose()
        await self.pipe_listener.aclose()

    def relay_config(self, sock: Path) -> RelayConfig:
        """Relay esx-a: one listener of each raw kind, and a vSPC Telnet one."""
        d = self.d
        return relay_config(
            "esx-a",
            sock,
            {
                "tcp": (
                    TcpListener(name="tcp-in", vm="vm-tcp-in", port=0, label="com1"),
                    TcpListener(
                        name="tcp-out",
                        vm="vm-tcp-out",
                        port=self.tcp_port,
                        mode="client",
                        label="com1",
                    ),
                ),
                "pipe": (
                    PipeListener(
                        name="pipe-listen", vm="vm-pipe-l", path=d / "pipe-l.sock", label="com1"
                    ),
                    PipeListener(
                        name="pipe-connect",
                        vm="vm-pipe-c",
                        path=self.pipe_path,
                        mode="connect",
                        label="com1",
                    ),
                    PipeListener(
                        name="pipe-fifo",
                        vm="vm-fifo",
                        path=self.fifo_base,
                        mode="fifo",
                        label="com1",
                    ),
                ),
                "serial": (
                    SerialListener(
                        name="pty", vm="vm-pty", device=Path(self.slave_path), label="ttyS0"
                    ),
                ),
                "hvsock": (
                    HvsockListener(
                        name="hvsock", vm="vm-fc", uds_path=d / "fc.vsock", port=52, label="vsock"
                    ),
                ),
                "vspc": (VspcListener(name="vspc", port=0),),
            },
        )

    async def tcp_in(self) -> trio.abc.Stream:
        return await trio.open_tcp_stream("127.0.0.1", self.relay_bound["tcp-in"][1])

    async def tcp_out(self) -> trio.abc.Stream:
        return await self.tcp_listener.accept()

    async def pipe_l(self) -> trio.abc.Stream:
        return await trio.open_unix_socket(str(self.d / "pipe-l.sock"))

    async def pipe_c(self) -> trio.abc.Stream:
        return await self.pipe_listener.accept()

    async def pty(self) -> trio.abc.Stream:
        return trio.lowlevel.FdStream(os.dup(self.master))

    async def fifo(self) -> trio.abc.Stream:
        # the relay writes <base>.in and reads <base>.out: the VM does the opposite
        out_fd = await trio.to_thread.run_sync(os.open, f"{self.fifo_base}.out", os.O_WRONLY)
        # read-write so the VM's read end never sees EOF before the relay opens it
        in_fd = os.open(f"{self.fifo_base}.in", os.O_RDWR | os.O_NONBLOCK)
        return trio.StapledStream(trio.lowlevel.FdStream(out_fd), trio.lowlevel.FdStream(in_fd))

    async def hvsock(self) -> trio.abc.Stream:
        return await trio.open_unix_socket(f"{self.d / 'fc.vsock'}_52")

    def kinds(self) -> list[tuple[str, str, str, Opener]]:
        """(vm, label, what, opener) for each raw ingress kind."""
        return [
            ("vm-tcp-in", "com1", "network serial, raw TCP (ESX connects in)", self.tcp_in),
            ("vm-tcp-out", "com1", "network serial, raw TCP (relay connects out)", self.tcp_out),
            ("vm-pipe-l", "com1", "named pipe, relay listening", self.pipe_l),
            ("vm-pipe-c", "com1", "named pipe, relay connecting", self.pipe_c),
            ("vm-fifo", "com1", "FIFO pair", self.fifo),
            ("vm-pty", "ttyS0", "pty serial line (pyserial)", self.pty),
            ("vm-fc", "vsock", "hybrid vsock (Firecracker style)", self.hvsock),
        ]


async def run(
    service: VspcService, endpoint: Endpoint, workdir: Path, *, seed: int, lines: int
) -> list[ConsoleCheck]:
    rng = random.Random(seed * 1000 + 2)  # other VMs than scenario 1's
    sock = endpoint.config.unix
    assert sock is not None
    d = workdir / "relay"
    d.mkdir(exist_ok=True)
    checks: list[ConsoleCheck] = []
    async with trio.open_nursery() as nursery:
        ends = _VmEnds(d)
        await ends.listen()
        cfg_b = relay_config("esx-b", sock, {"vspc": (VspcListener(name="vspc", port=0),)})
        relay_a: RelayDaemon = await nursery.start(RelayDaemon(ends.relay_config(sock)).run)
        relay_b: RelayDaemon = await nursery.start(RelayDaemon(cfg_b).run)
        ends.relay_bound = relay_a.bound
        ports = (relay_a.bound["vspc"][1], relay_b.bound["vspc"][1])
        await _run_vms(service, ends, ports, rng, lines, checks)
        await ends.aclose()
        nursery.cancel_scope.cancel()
    checks.append(
        ConsoleCheck(
            "vm-vsock",
            "AF_VSOCK -> relay",
            skipped="no vsock loopback here (bind/listen are tested; data paths use hybrid vsock)",
        )
    )
    return checks


async def _run_vms(
    service: VspcService,
    ends: _VmEnds,
    vspc_ports: tuple[int, int],
    rng: random.Random,
    lines: int,
    checks: list[ConsoleCheck],
) -> None:
    """Every raw-kind VM through relay esx-a, and a Telnet VM moving from esx-a to esx-b."""
    async with trio.open_nursery() as vms:
        for vm, label, what, opener in ends.kinds():
            check = ConsoleCheck(vm, f"{what} -> relay esx-a -> endpoint")
            checks.append(check)
            stream = await opener()
            vms.start_soon(raw_vm, service, check, PortKey(vm, label), stream, lines)
        telnet = ConsoleCheck("vm-telnet", "vSPC Telnet via relay esx-a => relay esx-b")
        checks.append(telnet)
        vms.start_soon(_telnet_through_relays, service, telnet, *vspc_ports, rng, lines)


async def _telnet_through_relays(
    service: VspcService,
    check: ConsoleCheck,
    port_a: int,
    port_b: int,
    rng: random.Random,
    lines: int,
) -> None:
    vm = SimVM.random(rng, "vm-telnet")
    key = PortKey(vm.canonical_uuid, "com1")
    async with trio.open_nursery() as n:
        src = await EsxConnection.open(n, "127.0.0.1", port_a, vm=vm, label="com1")
        ref = [src]
        first = console_text(rng, check.name, 0)
        await src.send_console(first)
        check.sent += first
        console, rest = await attach(service, key)
        check.received += rest
        n.start_soon(pump_into, console, check.received)
        gate = Gate()
        for i in range(1, lines):
            if i == lines // 2:
                gate.close()
                seq = random_seq(rng, with_ff=True)
                m = await migrate(
                    ref[0],
                    "127.0.0.1",
                    port_b,
                    nursery=n,
                    seq=seq,
                    rng=rng,
                    complete=False,
                    close_source=False,
                )
                typed = b"typed while paused\r"
                check.typed += typed
                await console.send_all(typed)
                await m.dest.vmotion_complete(seq)
                await ref[0].aclose()
                ref[0] = m.dest
                gate.open()
                with trio.fail_after(10):
                    check.typed_seen += await m.dest.receive_console_exactly(len(typed))
                check.events.append("vMotion esx-a -> esx-b through both relays: complete")
            data = console_text(rng, check.name, i)
            await ref[0].send_console(data)
            check.sent += data
            await trio.sleep(0.002)
        with trio.move_on_after(10):
            await wait_until(lambda: len(check.received) >= len(check.sent))
        await ref[0].aclose()
        n.cancel_scope.cancel()
