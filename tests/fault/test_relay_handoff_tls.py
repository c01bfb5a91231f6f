"""A handoff moves streams whose egress is TLS: the successor continues them.

Real processes: a `vic vspc` appliance with a TLS endpoint (our own CA,
common.io.certs), a `vic relay` whose VMs' streams reach it over TLS, and a
second `vic relay` on the same config that takes over by handoff (relay.handoff).
Python's ssl cannot export a TLS session, so the old relay stops each pump at a
safe point, ends its TLS connection and passes the VM's socket with the byte
counts; the successor opens a new TLS connection whose origin header (version 2)
continues the stream there (relay.pump_tls). Every VM writes numbered lines all
along, and a console client at the appliance types numbered lines to every VM.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from pathlib import Path

import pytest
import trio

from common.proto.console import protocol as proto
from tests.fault.topology import APP, A, counter, explain
from tests.relay.pki_helpers import Pki
from tests.support.daemons import Daemon, Daemons, Table, free_port, free_ports
from tests.support.waiting import wait_until
from vspc.console.client import Endpoint as ConsoleEndpoint
from vspc.console.client import attach

pytestmark = pytest.mark.slow

VMS = 50
LINES = 20  # 11-byte counter lines per write: 220 bytes
PACE = 0.01  # seconds between writes (~22 kB/s a stream each way), pacing only
DISCARDED = re.compile(rb"(\d+) bytes discarded")
LINE = re.compile(rb"(?<![0-9])([0-9]{10})\n")


def _tls(files: object) -> Table:
    return {"cert": str(files.cert), "key": str(files.key)}  # type: ignore[attr-defined]


def _configs(tmp: Path, pki: Pki, ports: list[int]) -> tuple[Table, Table]:
    server = pki.issue("appliance", "vch", dns_names=("appliance.test",))
    endpoint_port = free_port(APP)
    relay: Table = {
        "host": "esx-a",
        "log-level": "info",
        "handoff-socket": str(tmp / "esx-a.handoff"),
        "egress": {
            "default": {
                "kind": "tcp",
                "host": APP,
                "port": endpoint_port,
                "tls": _tls(pki.issue("host", "esx-a"))
                | {"ca": str(server.ca), "server-name": "appliance.test"},
            }
        },
        "metrics": {"enabled": False},
        "timeouts": {"drain": 30.0},
        "tcp": [
            {"name": f"vm{i}", "vm": f"vm-{i}", "host": A, "port": p, "label": "com1"}
            for i, p in enumerate(ports)
        ],
    }
    app: Table = {
        "listen": {"host": APP, "port": free_port(APP)},
        "endpoint": {
            "host": APP,
            "port": endpoint_port,
            "resend-bytes": 1 << 20,
            "tls": _tls(server) | {"client-ca": str(server.ca)},
        },
        "console": {
            "log-dir": str(tmp / "consoles"),
            "socket": str(tmp / "console.sock"),
            "log-max-bytes": 1 << 30,
        },
        "metrics": {"host": APP, "port": free_port(APP)},
    }
    return relay, app


class Vm:
    """One VM: numbered lines out all along; what the appliance typed, in."""

    def __init__(self, index: int, stream: trio.SocketStream) -> None:
        self.index = index
        self.stream = stream
        self.lines = 0
        self.got = bytearray()
        self.arrivals: list[float] = []
        self.stop = trio.Event()
        self.stopped = trio.Event()
        self.cut = False

    async def send(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            while not self.stop.is_set():
                await self.stream.send_all(counter(self.lines, LINES))
                self.lines += LINES
                await trio.sleep(PACE)
        self.stopped.set()

    async def receive(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await self.stream.receive_some(65536):
                self.got += data
                self.arrivals.append(trio.current_time())
        self.cut = True


class Typist:
    """A console client typing numbered lines to one VM; the bytes the appliance said
    it discarded (typed while no VM stream was connected)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.lines = 0
        self.stop = trio.Event()
        self.stopped = trio.Event()
        self.heard = bytearray()

    async def type(self) -> None:
        while not self.stop.is_set():
            await self.stream.send_all(counter(self.lines, LINES))
            self.lines += LINES
            await trio.sleep(PACE)
        self.stopped.set()

    async def listen(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await self.stream.receive_some(65536):
                self.heard += data

    @property
    def discarded(self) -> int:
        return sum(int(m) for m in DISCARDED.findall(bytes(self.heard)))


def in_order(got: bytes) -> bool:
    """The whole counter lines in ``got`` count up: nothing repeated or reordered
    (ranges may be left out: input discarded while no stream was connected)."""
    numbers = [int(m) for m in LINE.findall(got)]
    return all(a < b for a, b in itertools.pairwise(numbers))


def log_of(tmp: Path, vm: int) -> bytes:
    path = tmp / "consoles" / f"vm-{vm}_com1.log"
    return path.read_bytes() if path.exists() else b""


async def test_handoff_continues_tls_egress_streams_exactly(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    ports = free_ports(VMS, A)
    relay_cfg, app_cfg = _configs(tmp_path, pki, ports)
    async with Daemons(tmp_path) as ds:
        app: Daemon = ds.add("vspc", "appliance", app_cfg)
        old, new = ds.add("relay", "esx-a", relay_cfg), ds.add("relay", "esx-a2", relay_cfg)
        await app.start()
        await old.start()
        vms = [Vm(i, await trio.open_tcp_stream(A, p)) for i, p in enumerate(ports)]
        typists: list[Typist] = []
        with trio.fail_after(240):
            t0, t1 = await _traffic(tmp_path, vms, typists, old, new)
    want = [counter(0, v.lines) for v in vms]
    gaps = sorted(_longest_gap(v.arrivals, t0, t1) for v in vms)
    for i, (vm, w) in enumerate(zip(vms, want, strict=True)):
        got = log_of(tmp_path, i)
        assert got == w, f"vm-{i}: {explain(got, w)}"
        assert not vm.cut
    lost = 0
    for vm, t in zip(vms, typists, strict=True):
        typed = counter(0, t.lines)
        assert in_order(bytes(vm.got)), f"vm-{vm.index}: a repeat or a reorder"
        assert len(vm.got) + t.discarded == len(typed), (len(vm.got), t.discarded, len(typed))
        lost += t.discarded
    assert old.log().count("moved to the successor") == VMS
    assert new.log().count("taken over (") == VMS
    assert app.log().count("continues at offset") == VMS
    assert "lost on the way" not in app.log()
    again = [int(m) for m in re.findall(r"sending (\d+) again", app.log())]
    print(
        f"\nhandoff of {VMS} TLS-egress streams: all continued, VM->appliance exact; "
        f"handoff {(t1 - t0) * 1000:.0f} ms (successor start to old exit); longest gap "
        f"appliance->VM median {gaps[len(gaps) // 2] * 1000:.0f} ms, max {gaps[-1] * 1000:.0f} "
        f"ms; the appliance sent {sum(again)} bytes again ({sum(1 for a in again if a)} "
        f"streams; most {max(again, default=0)}); {lost} typed bytes discarded while no "
        "stream was connected"
    )


def _longest_gap(arrivals: list[float], start: float, end: float) -> float:
    before = [t for t in arrivals if t < start][-1:]
    inside = [t for t in arrivals if start <= t <= end]
    after = [t for t in arrivals if t > end][:1]
    points = before + inside + after
    return max((b - a for a, b in itertools.pairwise(points)), default=end - start)


async def _traffic(
    tmp: Path, vms: list[Vm], typists: list[Typist], old: Daemon, new: Daemon
) -> tuple[float, float]:
    """Traffic both ways, the handoff in the middle, until every byte arrived; when
    the handoff started and when the old relay was gone."""
    ep = ConsoleEndpoint(socket=tmp / "console.sock")
    async with trio.open_nursery() as n:
        for vm in vms:
            n.start_soon(vm.send)
            n.start_soon(vm.receive)
        await wait_until(lambda: all(len(log_of(tmp, i)) > 2000 for i in range(VMS)))
        for i in range(VMS):
            stream, _st, rest = await attach(
                ep, proto.AttachRequest(vm=f"vm-{i}", label="com1", mode="rw")
            )
            typists.append(Typist(stream))
            typists[-1].heard += rest
        for t in typists:
            n.start_soon(t.type)
            n.start_soon(t.listen)
        await wait_until(lambda: all(len(v.got) > 2000 for v in vms))
        t0 = trio.current_time()
        await new.start()
        await new.wait_log("took over from relay pid")
        assert await old.wait_exit(timeout=30) == 0
        t1 = trio.current_time()
        marks = [len(v.got) for v in vms]
        await wait_until(lambda: all(len(v.got) > m + 2000 for v, m in zip(vms, marks)))
        for t, v in zip(typists, vms, strict=True):
            t.stop.set()
            v.stop.set()
        for t, v in zip(typists, vms, strict=True):
            await t.stopped.wait()
            await v.stopped.wait()
        want = [len(counter(0, v.lines)) for v in vms]
        await wait_until(lambda: all(len(log_of(tmp, i)) >= w for i, w in enumerate(want)), 60)
        await wait_until(
            lambda: all(
                len(v.got) + t.discarded >= t.lines * 11 for v, t in zip(vms, typists, strict=True)
            ),
            60,
        )
        n.cancel_scope.cancel()
    return t0, t1
