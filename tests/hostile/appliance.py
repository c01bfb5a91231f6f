"""The appliance under attack: a real `vic vspc`, and honest traffic alongside.

``start_vspc`` runs the daemon from a config built on the README's minimal
``vspc.toml`` moved to loopback (free ports, a Unix endpoint, the console socket
and log directory in the test's directory); a test overrides what it attacks.
``HonestVm`` is an ESX VM (the lab's simulator, vic.lab.esx_sim) on its own
source address that keeps sending a counter pattern through the attack: its
console log must hold exactly what it sent, and an operator's keystrokes must
reach it. ``RawVm`` is the same for a raw stream relayed through the endpoint.
"""

from __future__ import annotations

import copy
import random
import ssl
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from common.proto.console import protocol as proto
from tests.relay.relayfix import pattern, wait_closed
from tests.support.daemons import Daemon, MiB, free_port, run_daemon
from tests.support.waiting import wait_until
from vic.lab.esx_sim import EsxBehaviour, EsxConnection, SimVM
from vspc.console import client as cc
from vspc.prefixed import PrefixedStream

#: One loopback address per simulated host.
VICTIM_HOST = "127.0.0.2"
ATTACKER_HOST = "127.0.0.3"
OTHER_HOST = "127.0.0.4"


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def vspc_config(workdir: Path, **over: Any) -> dict[str, Any]:
    """The README's minimal vspc.toml on loopback; ``over`` replaces tables' keys."""
    base: dict[str, Any] = {
        "log-level": "info",
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "endpoint": {"unix": str(workdir / "endpoint.sock")},
        "console": {"log-dir": str(workdir / "logs"), "socket": str(workdir / "console.sock")},
        "vmotion": {"timeout": 30.0, "max-concurrent": 64},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
    }
    return deep_merge(base, over)


@dataclass
class Vspc:
    daemon: Daemon
    config: dict[str, Any]
    workdir: Path

    @property
    def esx_port(self) -> int:
        return int(self.config["listen"]["port"])

    @property
    def log_dir(self) -> Path:
        return Path(self.config["console"]["log-dir"])

    @property
    def endpoint_unix(self) -> Path:
        return Path(self.config["endpoint"]["unix"])

    def console_endpoint(self) -> cc.Endpoint:
        return cc.Endpoint(socket=Path(self.config["console"]["socket"]))

    async def consoles(self) -> list[dict[str, Any]]:
        return await cc.list_consoles(self.console_endpoint())

    async def attach(
        self, vm: str, mode: str = "rw", *, label: str | None = None, replay: int = 0
    ) -> trio.abc.Stream:
        req = proto.AttachRequest(vm=vm, mode=mode, replay=replay, label=label)  # type: ignore[arg-type]
        stream, status, rest = await cc.attach(self.console_endpoint(), req)
        assert status.get("ok"), status
        return PrefixedStream(stream, rest)

    def log_files(self) -> list[Path]:
        """Console logs (not event logs) anywhere under the log directory."""
        return sorted(p for p in self.log_dir.rglob("*.log") if p.is_file())

    def log_for(self, stem_start: str) -> Path | None:
        found = [p for p in self.log_files() if p.name.startswith(stem_start)]
        assert len(found) <= 1, found
        return found[0] if found else None


@asynccontextmanager
async def start_vspc(workdir: Path, name: str = "vspc", **over: Any) -> AsyncIterator[Vspc]:
    config = vspc_config(workdir, **over)
    async with run_daemon("vspc", workdir, config, name=name) as d:
        yield Vspc(d, config, workdir)


# ---- resources


FD_SLACK = 5
RSS_SLACK = 20 * MiB


@dataclass(frozen=True)
class Baseline:
    """The daemon's open sockets and resident memory before an attack."""

    fds: int
    rss: int

    @classmethod
    def of(cls, vspc: Vspc) -> Baseline:
        return cls(vspc.daemon.sockets(), vspc.daemon.rss())

    async def back(self, vspc: Vspc, timeout: float = 10.0) -> None:
        """Socket descriptors back within FD_SLACK (waiting up to ``timeout``),
        memory within RSS_SLACK."""
        await wait_until(
            lambda: vspc.daemon.sockets() <= self.fds + FD_SLACK,
            timeout,
            f"sockets back near {self.fds} (now {vspc.daemon.sockets()})",
        )
        grown = vspc.daemon.rss() - self.rss
        assert grown <= RSS_SLACK, f"RSS {grown / MiB:.1f} MiB above the baseline"


# ---- an honest ESX VM on the Telnet listener


@dataclass
class HonestVm:
    """An ESX VM that keeps writing a counter pattern (every byte value, 0xFF
    included) through an attack; ``check`` compares its console log byte for byte."""

    vspc: Vspc
    conn: EsxConnection
    payload: bytes = field(default_factory=lambda: pattern(4 << 20, 11))
    sent: int = 0

    @property
    def uuid(self) -> str:
        return self.conn.vm.canonical_uuid

    async def send(self, n: int) -> None:
        chunk = self.payload[self.sent : self.sent + n]
        assert len(chunk) == n, "HonestVm.payload exhausted"
        self.sent += n  # counted before it is on its way: check() never expects less
        await self.conn.send_console(chunk)

    async def pump(self, stop: trio.Event, chunk: int = 1024) -> None:
        """Traffic while an attack runs: a chunk every few milliseconds until ``stop``."""
        while not stop.is_set():
            await self.send(chunk)
            with trio.move_on_after(0.005):
                await stop.wait()

    async def check(self, timeout: float = 20.0) -> None:
        """The console log holds exactly the bytes sent, in order, once each."""
        await check_logged(self.vspc, self.uuid, self.payload[: self.sent], timeout)

    async def check_input(self, text: bytes = b"operator-keystrokes\r") -> None:
        """An operator attached read-write types ``text``; the VM receives exactly it."""
        client = await self.vspc.attach(self.uuid, "rw")
        async with client:
            await client.send_all(text)
            with trio.fail_after(10):
                got = await self.conn.receive_console_exactly(len(text))
        assert got == text


async def check_logged(vspc: Vspc, stem_start: str, expected: bytes, timeout: float = 20.0) -> None:
    """The console log whose name starts with ``stem_start`` holds exactly ``expected``."""

    def logged() -> bytes:
        path = vspc.log_for(stem_start)
        return path.read_bytes() if path is not None else b""

    await wait_until(
        lambda: len(logged()) >= len(expected),
        timeout,
        f"{len(expected)} bytes in the console log of {stem_start!r}",
    )
    got = logged()
    assert got == expected, _first_difference(got, expected)


def _first_difference(got: bytes, want: bytes) -> str:
    n = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return (
        f"console log differs at byte {n}: got {len(got)} bytes, want {len(want)}; "
        f"got {got[n : n + 32]!r}, want {want[n : n + 32]!r}"
    )


async def open_esx(
    nursery: trio.Nursery, vspc: Vspc, vm: SimVM, source: str, **knobs: Any
) -> EsxConnection:
    behaviour = EsxBehaviour(**knobs)
    return await EsxConnection.open(
        nursery, "127.0.0.1", vspc.esx_port, vm=vm, behaviour=behaviour, local_address=source
    )


async def honest_vm(
    nursery: trio.Nursery, vspc: Vspc, source: str = VICTIM_HOST, seed: int = 1
) -> HonestVm:
    vm = SimVM.random(random.Random(seed), name=f"honest-{seed}")
    conn = await open_esx(nursery, vspc, vm, source)
    honest = HonestVm(vspc, conn)
    await honest.send(4096)
    return honest


# ---- raw streams relayed to the endpoint (what a relay sends)


def origin_header(
    host: str, vm: str, kind: str = "tcp", label: str = "serial0", stream_id: str = ""
) -> bytes:
    """common.proto.link.header's wire format, built by hand so a test can send what the
    relay's own encoder would refuse (an attacker does not use our encoder)."""
    body = b""
    for value in (host, vm, kind, label, stream_id):
        raw = value.encode("utf-8")
        body += bytes((len(raw),)) + raw
    return struct.pack(">4sBH", b"VICH", 1, len(body)) + body


async def endpoint_stream(
    vspc: Vspc,
    header: bytes,
    *,
    tcp: tuple[str, int] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> trio.abc.Stream:
    """Connect to the endpoint (its Unix socket, or ``tcp`` with optional TLS) and
    send ``header``."""
    stream: trio.abc.Stream
    if tcp is None:
        stream = await trio.open_unix_socket(str(vspc.endpoint_unix))
    else:
        stream = await trio.open_tcp_stream(*tcp)
        if ssl_context is not None:
            tls = trio.SSLStream(stream, ssl_context, server_hostname=tcp[0])
            await tls.do_handshake()
            stream = tls
    await stream.send_all(header)
    return stream


async def closed_by_peer(stream: trio.abc.Stream, timeout: float = 10.0) -> bytes:
    """Read until the daemon closes the stream (EOF, reset, or a TLS alert); what it sent."""
    return await wait_closed(stream, timeout, (trio.BrokenResourceError, ssl.SSLError))


@dataclass
class RawVm:
    """A raw relayed stream (as a relay delivers a guest's vsock or serial port)."""

    stream: trio.abc.Stream
    vm: str
    payload: bytes
    sent: int = 0
    received: bytearray = field(default_factory=bytearray)

    async def send(self, n: int) -> None:
        chunk = self.payload[self.sent : self.sent + n]
        assert len(chunk) == n
        self.sent += n
        await self.stream.send_all(chunk)

    async def check(self, vspc: Vspc, timeout: float = 20.0) -> None:
        await check_logged(vspc, self.vm, self.payload[: self.sent], timeout)

    async def receive_exactly(self, n: int, timeout: float = 10.0) -> bytes:
        with trio.fail_after(timeout):
            while len(self.received) < n:
                chunk = await self.stream.receive_some(65536)
                assert chunk, f"stream of {self.vm!r} ended after {len(self.received)} of {n} bytes"
                self.received += chunk
        out = bytes(self.received[:n])
        del self.received[:n]
        return out


async def raw_vm(
    vspc: Vspc,
    vm: str,
    *,
    host: str = "esx-a",
    label: str = "serial0",
    seed: int = 5,
    **connect: Any,
) -> RawVm:
    stream = await endpoint_stream(vspc, origin_header(host, vm, "tcp", label), **connect)
    return RawVm(stream, vm, pattern(1 << 20, seed))


async def console_named(vspc: Vspc, text: str) -> dict[str, Any] | None:
    """The listed console whose uuid or display is ``text`` (exactly), if any."""
    for c in await vspc.consoles():
        if text in (c.get("uuid"), c.get("display")):
            return c
    return None
