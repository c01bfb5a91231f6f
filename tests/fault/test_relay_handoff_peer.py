"""A handoff of the VM's relay moves its peer-route streams too: each VM connection
passes to the successor with its resumable stream's state, and the successor
resumes the session on its own peer link; the far relay never loses it.

Real processes: VMs (this test) --tcp--> esx-a (handoff) ==TLS peer link==> esx-b
--tcp--> an appliance that echoes (this test). A second esx-a, same config,
takes over while 50 VMs send numbered lines and read the echo.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import trio

from common.ops.lifecycle import Changed
from tests.fault.livestreams import EchoedVm, flow_on_then_stop
from tests.fault.topology import LINK, A, B
from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import Appliance
from tests.support.daemons import Daemon, Daemons, Table, free_port

pytestmark = pytest.mark.slow

STREAMS = 50


def _tls(files: object) -> Table:
    return {"cert": str(files.cert), "key": str(files.key), "ca": str(files.ca)}  # type: ignore[attr-defined]


def _esx_a(pki: Pki, vm_port: int, peer_port: int, handoff: Path) -> Table:
    return {
        "host": "esx-a",
        "handoff-socket": str(handoff),
        "egress": {"default": {"kind": "peer", "route": "appliance"}},
        "metrics": {"enabled": False},
        "timeouts": {"retry-min": 0.05, "retry-max": 0.5, "drain": 30.0},
        "limits": {"max-streams-per-vm": 1000},
        "tcp": [{"name": "vm1", "vm": "vm-1", "host": A, "port": vm_port}],
        "peer": {
            "tls": _tls(pki.issue("host", "esx-a")),
            "link": LINK,
            "routes": {
                "appliance": {"address": f"tcp:{B}:{peer_port}", "identity": "vic://host/esx-b"}
            },
        },
    }


def _esx_b(pki: Pki, peer_port: int, app_port: int) -> Table:
    listen = {
        "address": f"tcp:{B}:{peer_port}",
        "allowed-peers": ["vic://host/esx-a"],
        "egress": "appliance",
    }
    return {
        "host": "esx-b",
        "egress": {"appliance": {"kind": "tcp", "host": "127.0.0.1", "port": app_port}},
        "metrics": {"enabled": False},
        "timeouts": {"drain": 2.0},
        "limits": {"max-streams-per-vm": 1000},
        "peer": {"tls": _tls(pki.issue("host", "esx-b")), "link": LINK, "listen": [listen]},
    }


class BulkVm(EchoedVm):
    """A VM that writes flat out (56 kB at a time): replay buffers and windows fill."""

    async def send(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            while not self.stop.is_set():
                chunk = b"".join(b"%04d %08d\n" % (self.index, self.lines + i) for i in range(4000))
                self.lines += 4000
                self.sent += chunk
                await self.stream.send_all(chunk)
            await self.stream.send_eof()


async def _open(port: int, progress: Changed, vm: type[EchoedVm], n: int) -> list[EchoedVm]:
    return [vm(i, await trio.open_tcp_stream(A, port), progress) for i in range(n)]


def _figures(old: Daemon, vms: list[EchoedVm], t0: float, ready: float, t1: float) -> str:
    kind = f"{len(vms)} {'bulk' if isinstance(vms[0], BulkVm) else 'paced'}"
    gaps = sorted(v.longest_gap(t0, t1) for v in vms)
    moved = next(x for x in old.log_lines() if "live streams moved" in x)
    return (
        f"\n{moved.split('handoff: ', 1)[-1]}\nhandoff of {kind} peer-route streams: old "
        f"process gone {(t1 - ready) * 1000:.0f} ms after the successor was READY "
        f"({(ready - t0) * 1000:.0f} ms after it was started); longest "
        f"echo gap per stream: median {gaps[len(gaps) // 2] * 1000:.0f} ms, max "
        f"{gaps[-1] * 1000:.0f} ms (loadavg {os.getloadavg()[0]:.1f})"
    )


@pytest.mark.parametrize(("vm_kind", "streams"), [(EchoedVm, STREAMS), (BulkVm, 10)])
async def test_handoff_moves_peer_route_streams_exactly(
    tmp_path: Path, vm_kind: type[EchoedVm], streams: int
) -> None:
    """Every byte once, in order, both ways; none cut; the far relay keeps each
    session (no continuation, no second appliance connection); the old process
    exits at once instead of draining for 30 s. Paced consoles, and VMs writing
    flat out (the replay and the bytes in flight are then large)."""
    app = Appliance(echo=True)
    pki = Pki(tmp_path / "pki")
    vm_port, peer_port = free_port(A), free_port(B)
    with trio.fail_after(120):
        async with trio.open_nursery() as n, Daemons(tmp_path) as ds:
            cfg_a = _esx_a(pki, vm_port, peer_port, tmp_path / "a.handoff")
            b = ds.add("relay", "esx-b", _esx_b(pki, peer_port, await app.serve_tcp(n)))
            old, new = ds.add("relay", "esx-a", cfg_a), ds.add("relay", "esx-a2", cfg_a)
            await b.start()
            await old.start()
            progress = Changed()
            vms = await _open(vm_port, progress, vm_kind, streams)
            async with trio.open_nursery() as traffic:
                for vm in vms:
                    vm.start(traffic)
                await progress.wait_until(lambda: all(len(v.got) > 2000 for v in vms))
                t0 = trio.current_time()
                await new.start()
                ready = trio.current_time()
                assert await old.wait_exit(timeout=20) == 0  # nothing left to drain
                t1 = trio.current_time()
                await flow_on_then_stop(vms, progress)
            n.cancel_scope.cancel()
    for vm in vms:
        assert vm.got == vm.sent and not vm.cut, f"stream {vm.index}: {len(vm.got)}"
        await vm.stream.aclose()
    received = sorted(bytes(r.data) for r in app.streams)
    assert received == sorted(bytes(v.sent) for v in vms)  # each once, one connection each
    assert old.log().count("moved to the successor") == streams
    assert new.log().count("taken over (") == streams
    assert "stays here" not in old.log() and "cut at the drain deadline" not in old.log()
    assert "continuing as" not in new.log()  # esx-b never lost a session
    assert "refused" not in b.log()
    print(_figures(old, vms, t0, ready, t1))
