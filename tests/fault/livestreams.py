"""Live VM connections for the handoff tests (tests.fault.test_relay_handoff): a
relay config with a handoff socket, a VM that writes numbered lines and checks the
appliance's echo, a TLS appliance."""

from __future__ import annotations

import contextlib
import itertools
import ssl
from collections.abc import Sequence
from pathlib import Path

import trio
import trustme

from common.ops.lifecycle import Changed
from tests.relay.relayfix import Appliance

STREAMS = 200
CHUNK_LINES = 40  # 14-byte lines: 560 bytes per write


def moving_relay_toml(app: int | Path, vm_port: int, handoff_path: Path, drain: float) -> str:
    """One TCP listener for the VMs; the appliance on a TCP port or a Unix socket."""
    egress = (
        f'kind = "unix"\npath = "{app}"'
        if isinstance(app, Path)
        else f'kind = "tcp"\nhost = "127.0.0.1"\nport = {app}'
    )
    return f"""log-level = "info"
handoff-socket = "{handoff_path}"
[egress.default]
{egress}
[metrics]
enabled = false
[timeouts]
drain = {drain}
[limits]
max-streams-per-vm = 1000
[[tcp]]
name = "vm1"
vm = "vm1"
port = {vm_port}
"""


class EchoedVm:
    """One VM connection: numbered lines out, the appliance's echo back; when each
    echo arrived (to measure the longest gap)."""

    def __init__(self, index: int, stream: trio.SocketStream, progress: Changed) -> None:
        self.index = index
        self.progress = progress
        self.stream = stream
        self.sent = bytearray()
        self.got = bytearray()
        self.arrivals: list[float] = []
        self.stop = trio.Event()
        self.lines = 0
        self.cut = False  # the stream ended before the VM's own EOF came back
        self.done = False  # its receiving ended

    async def send(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # cut (a stream that stays)
            while not self.stop.is_set():
                chunk = b"".join(
                    b"%04d %08d\n" % (self.index, self.lines + i) for i in range(CHUNK_LINES)
                )
                self.lines += CHUNK_LINES
                self.sent += chunk
                await self.stream.send_all(chunk)
                await trio.sleep(0.02)  # pacing the load (~28 kB/s a stream), not synchronising
            await self.stream.send_eof()

    async def receive(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await self.stream.receive_some(65536):
                self.got += data
                self.arrivals.append(trio.current_time())
                self.progress.notify()
        self.cut = len(self.got) < len(self.sent) or not self.stop.is_set()
        self.done = True
        self.progress.notify()

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self.send)
        nursery.start_soon(self.receive)

    def longest_gap(self, start: float, end: float) -> float:
        before = [t for t in self.arrivals if t < start][-1:]
        inside = [t for t in self.arrivals if start <= t <= end]
        after = [t for t in self.arrivals if t > end][:1]
        points = before + inside + after
        return max((b - a for a, b in itertools.pairwise(points)), default=end - start)


async def flow_on_then_stop(vms: Sequence[EchoedVm], progress: Changed) -> None:
    """Every VM's echo moves on (2,000 bytes past where it is now), then each stops."""
    marks = [len(v.got) for v in vms]
    await progress.wait_until(
        lambda: all(len(v.got) > m + 2000 for v, m in zip(vms, marks, strict=True))
    )
    for vm in vms:
        vm.stop.set()


async def open_vms(port: int, count: int, progress: Changed, first: int = 0) -> list[EchoedVm]:
    return [
        EchoedVm(i, await trio.open_tcp_stream("127.0.0.1", port), progress)
        for i in range(first, first + count)
    ]


def tls_appliance_toml(tmp_path: Path, plain_port: int, tls_port: int, vm_ports: list[int]) -> str:
    path, (p1, p2) = tmp_path / "h.sock", vm_ports
    base = moving_relay_toml(plain_port, p1, path, drain=DRAIN)
    return (
        base
        + f"""[egress.secure]
kind = "tcp"
host = "127.0.0.1"
port = {tls_port}
[egress.secure.tls]
ca = "{tmp_path / "ca.pem"}"
server-name = "appliance.test"
[[tcp]]
name = "vm2"
vm = "vm2"
port = {p2}
egress = "secure"
"""
    )


DRAIN = 3.0


async def serve_tls(app: Appliance, n: trio.Nursery, tmp_path: Path) -> int:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("appliance.test").configure_cert(ctx)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    n.start_soon(trio.serve_listeners, app.handle, [trio.SSLListener(x, ctx) for x in listeners])
    return int(listeners[0].socket.getsockname()[1])


def continued_exactly(app: Appliance, vm: EchoedVm) -> str:
    """A stream that moved by continuation (relay.pump_tls) to this echoing appliance,
    which keeps nothing between connections: its first connection's bytes and the
    second's are the VM's, in order, the second's header offsets say where each
    side stood, and the VM got the first's echo up to ``received``, then the
    second's (this appliance sends nothing again). "" when so, else what is wrong."""
    tag = b"%04d " % vm.index
    recs = [r for r in app.streams if bytes(r.data[:5]) == tag]
    if len(recs) != 2 or not recs[1].header.continues:
        return f"{len(recs)} connections"
    first, second = recs
    off, got = second.header.offset, second.header.received
    if (first.header.stream_id, off) != (second.header.stream_id, len(first.data)):
        return f"offset {off} after {len(first.data)} bytes"
    if bytes(first.data + second.data) != bytes(vm.sent):
        return "the appliance's bytes are not the VM's"
    if bytes(vm.got) != bytes(vm.sent[:got] + vm.sent[off:]):
        return f"the VM's echo is not the first {got} bytes and the second connection's"
    return ""
