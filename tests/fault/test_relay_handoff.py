"""Restart a relay by handoff, mid-stream: no byte lost or repeated, no connection
refused, and the gap the appliance sees measured.

Real processes (tests.fault.topology): VM -> esx-a -> esx-b (sessions end here)
-> appliance. A second `vic relay` for esx-b, same config, starts while the first
one runs: it takes the listening sockets over the handoff socket (relay.handoff),
the first one leaves its sessions and exits, and esx-a's stream resumes against
the new process (UNKNOWN_SESSION, then CONTINUE from the last acknowledged byte).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from common.ops import inherit
from common.ops.lifecycle import Changed
from relay import handoff
from relay.admin import admin_request
from tests.fault.livestreams import (
    DRAIN,
    STREAMS,
    continued_exactly,
    flow_on_then_stop,
    moving_relay_toml,
    open_vms,
    serve_tls,
    tls_appliance_toml,
)
from tests.fault.topology import APP, A, B, Mesh, counter, explain
from tests.relay.relayfix import Appliance
from tests.support.daemons import Daemons, free_port

pytestmark = pytest.mark.slow

BATCH = 500  # lines: 5.5 KB


class Vm:
    """The VM's output: counter lines in batches with a short pause (a console, not a
    bulk copy), until told to stop."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.lines = 0
        self.stop = trio.Event()
        self.stopped = trio.Event()

    @property
    def sent(self) -> int:
        return self.lines * 11

    async def run(self) -> None:
        while not self.stop.is_set():
            await self.stream.send_all(counter(self.lines, BATCH))
            self.lines += BATCH
            await trio.sleep(0.005)  # pacing the load (~1 MB/s), not synchronising
        self.stopped.set()


class Timeline:
    """When the appliance's console log grew (sampled): the longest stall in a window."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.samples: list[tuple[float, int]] = []

    async def run(self) -> None:
        while True:
            self.samples.append((trio.current_time(), len(self.mesh.console_log())))
            await trio.sleep(0.002)  # a measurement's sampling period

    def longest_stall(self, start: float, end: float) -> float:
        grew = [t for (t, n), (_, m) in itertools.pairwise(self.samples) if m > n]
        inside = [t for t in grew if start <= t <= end]
        before = [t for t in grew if t < start][-1:]
        after = [t for t in grew if t > end][:1]
        points = before + inside + after
        return max((b - a for a, b in itertools.pairwise(points)), default=end - start)


class Prober:
    """Connects to a TCP port (or a Unix socket) over and over; counts refusals."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.where: str | tuple[str, int] = (host, port) if port else host
        self.attempts = 0
        self.refused = 0

    async def run(self) -> None:
        family = socket.AF_UNIX if isinstance(self.where, str) else socket.AF_INET
        while True:
            s = trio.socket.socket(family, socket.SOCK_STREAM)
            try:
                await s.connect(self.where)
            except OSError as e:
                self.refused += e.errno in (errno.ECONNREFUSED, errno.ENOENT)
            finally:
                s.close()
            self.attempts += 1
            await trio.sleep(0.005)  # probing rate


async def through_a_change(
    mesh: Mesh, prober: Prober, change: Callable[[], Awaitable[None]]
) -> tuple[bytes, bytes, float]:
    """Stream counter lines from the VM while ``change()`` runs (probing meanwhile),
    then 500 kB more; (what arrived, what was sent, the appliance's longest stall)."""
    vm = Vm(await mesh.connect_vm())
    timeline = Timeline(mesh)
    with trio.fail_after(120):
        async with trio.open_nursery() as n:
            n.start_soon(vm.run)
            n.start_soon(timeline.run)
            await mesh.wait_console_log(500_000)
            n.start_soon(prober.run)
            t0 = trio.current_time()
            await change()
            t1 = trio.current_time()
            await mesh.wait_console_log(vm.sent + 500_000)  # flowing after the change
            vm.stop.set()
            await vm.stopped.wait()
            data = counter(0, vm.lines)
            got = await mesh.wait_console_log(len(data), timeout=60)
            n.cancel_scope.cancel()
    await vm.stream.aclose()
    return got, data, timeline.longest_stall(t0, t1)


def metrics_on_a(mesh: Mesh) -> None:
    """esx-a's metrics on; the appliance's console log in one file (no rotation)."""
    assert isinstance(mesh.a.config, dict) and isinstance(mesh.app.config, dict)
    mesh.app.config["console"]["log-max-bytes"] = 1 << 30
    port = free_port(APP)
    mesh.a.config["metrics"] = {"host": APP, "port": port}
    mesh.a.metrics_address = (APP, port)


def peer_port(mesh: Mesh) -> int:
    assert isinstance(mesh.b.config, dict)
    return int(mesh.b.config["peer"]["listen"][0]["address"].rsplit(":", 1)[1])


@pytest.mark.parametrize("role", ["egress", "forward"])
async def test_handoff_restart_keeps_the_stream_exact_and_refuses_nothing(
    tmp_path: Path, role: str
) -> None:
    """esx-b ends the sessions (they continue in the new process) or forwards the
    whole link (the sessions end at the appliance and resume there)."""
    async with Daemons(tmp_path) as ds:
        mesh = Mesh(tmp_path, ds, role=role)
        assert isinstance(mesh.b.config, dict)
        mesh.b.config["handoff-socket"] = str(tmp_path / "esx-b.handoff")
        mesh.b.config["timeouts"] = {"drain": 30.0}  # what a plain restart would wait
        metrics_on_a(mesh)
        b2 = ds.add("relay", "esx-b2", mesh.b.config)
        await mesh.start()
        prober = Prober(B, peer_port(mesh))
        times: list[float] = []

        async def hand_off() -> None:
            t0 = trio.current_time()
            await b2.start()  # takes over; READY=1
            times.append(trio.current_time() - t0)
            assert await mesh.b.wait_exit(timeout=20) == 0  # no local stream to drain
            times.append(trio.current_time() - t0)

        got, data, stall = await through_a_change(mesh, prober, hand_off)
        assert got == data, explain(got, data)
        if role == "egress":  # the new process never had the session: continued
            assert "continuing as" in mesh.a.log()
        assert prober.attempts > 10 and prober.refused == 0, vars(prober)
        assert await mesh.a.metric("relay_route_connect_failures_total") == 0
        assert "taking over from relay pid" in b2.log()
        assert "handed off: no new streams" in mesh.b.log()
        print(
            f"\nhandoff ({role}): successor READY after {times[0] * 1000:.0f} ms, "
            f"old process gone after {times[1] * 1000:.0f} ms; appliance stall "
            f"{stall * 1000:.0f} ms; {prober.attempts} connects during it, 0 refused"
        )


async def test_plain_restart_for_comparison(tmp_path: Path) -> None:
    """What the handoff saves: SIGTERM (a 2 s drain here, 30 s by default), then a
    new start. No byte is lost either (resume), but the appliance waits for the
    drain and the start, and connections are refused meanwhile."""
    async with Daemons(tmp_path) as ds:
        mesh = Mesh(tmp_path, ds, role="egress")
        metrics_on_a(mesh)
        await mesh.start()
        prober = Prober(B, peer_port(mesh))

        async def restart() -> None:
            await mesh.b.stop()
            await mesh.b.start()

        got, data, stall = await through_a_change(mesh, prober, restart)
        assert got == data, explain(got, data)
        failures = await mesh.a.metric("relay_route_connect_failures_total")
        assert prober.refused > 0 and failures > 0  # the port was closed meanwhile
        print(
            f"\nplain restart: appliance stall {stall * 1000:.0f} ms; "
            f"{prober.refused} of {prober.attempts} connects refused; "
            f"{failures:.0f} route connect failures at esx-a"
        )


async def test_handoff_of_the_ingress_relay_keeps_every_port_open(tmp_path: Path) -> None:
    """esx-a holds the VM's own connection, whose egress is a peer route: it moves to
    the new process with its session (relay.pump_peer), which resumes it on its own
    link, while the new one answers on the VM port, the admin socket and the
    metrics port, none of which refuses a connection meanwhile."""
    async with Daemons(tmp_path) as ds:
        mesh = Mesh(tmp_path, ds, role="egress")
        cfg = mesh.a.config
        assert isinstance(cfg, dict) and isinstance(mesh.app.config, dict)
        mesh.app.config["console"]["log-max-bytes"] = 1 << 30
        admin, metrics = tmp_path / "esx-a.sock", free_port(A)
        cfg["handoff-socket"] = str(tmp_path / "esx-a.handoff")
        cfg["peer"]["admin-socket"] = str(admin)
        cfg["metrics"] = {"host": A, "port": metrics}
        cfg["timeouts"]["drain"] = 30.0
        # a second VM port to knock on: its streams go nowhere (a closed port), so
        # the probing leaves the appliance alone
        probe_port = free_port(A)
        cfg["egress"]["void"] = {"kind": "tcp", "host": A, "port": free_port(A)}
        vm2 = {"name": "vm2", "vm": "vm-2", "host": A, "port": probe_port, "egress": "void"}
        cfg["tcp"].append(vm2)
        a2 = ds.add("relay", "esx-a2", cfg)
        await mesh.start()
        vm = Vm(await mesh.connect_vm())
        probers = [Prober(A, probe_port), Prober(A, metrics), Prober(str(admin))]
        with trio.fail_after(120):
            async with trio.open_nursery() as n:
                n.start_soon(vm.run)
                await mesh.wait_console_log(300_000)
                for p in probers:
                    n.start_soon(p.run)
                await a2.start()
                await a2.expect_state(f"MAINPID={a2.pid}")  # systemd follows the successor
                # the VM's stream moved: the old process is gone, the stream flows on
                assert await mesh.a.wait_exit(timeout=20) == 0
                await mesh.wait_console_log(vm.sent + 300_000)
                reply = await admin_request(admin, {"cmd": "route.show"})
                assert reply["ok"] and reply["routes"]["appliance"]["source"] == "file"
                vm.stop.set()
                await vm.stopped.wait()
                data = counter(0, vm.lines)
                got = await mesh.wait_console_log(len(data), timeout=60)
                await vm.stream.aclose()
                n.cancel_scope.cancel()
        assert got == data, explain(got, data)
        for p in probers:
            assert p.attempts > 10 and p.refused == 0, vars(p)
        assert "handed off: no new streams; draining" in mesh.a.log()
        assert "moved to the successor" in mesh.a.log()
        assert "continuing as" not in a2.log()  # esx-b kept the session


@pytest.mark.parametrize("egress", ["tcp", "unix"])
async def test_handoff_moves_live_streams_exactly_and_at_once(tmp_path: Path, egress: str) -> None:
    """200 VM connections with traffic both ways (the appliance echoes, on a TCP port
    or a Unix socket): the old relay passes every one to the successor and exits at
    once, not after its 30 s drain; every byte arrives exactly once, in order, both
    ways; no connect is refused."""
    app = Appliance(echo=True)
    vm_port, path = free_port(), tmp_path / "h.sock"
    with trio.fail_after(120):
        async with trio.open_nursery() as n, Daemons(tmp_path) as ds:
            where: int | Path = (
                await app.serve_tcp(n)
                if egress == "tcp"
                else await app.serve_unix(n, tmp_path / "app.sock")
            )
            toml = moving_relay_toml(where, vm_port, path, drain=30.0)
            old, new = ds.add("relay", "esx-a", toml), ds.add("relay", "esx-a2", toml)
            await old.start()
            progress = Changed()
            vms = await open_vms(vm_port, STREAMS, progress)
            async with trio.open_nursery() as traffic:
                for vm in vms:
                    vm.start(traffic)
                await progress.wait_until(lambda: all(len(v.got) > 2000 for v in vms))
                prober = Prober("127.0.0.1", vm_port)
                n.start_soon(prober.run)
                t0 = trio.current_time()
                await new.start()
                assert await old.wait_exit(timeout=20) == 0  # nothing left to drain
                t1 = trio.current_time()
                await flow_on_then_stop(vms, progress)
            n.cancel_scope.cancel()
    for vm in vms:
        assert vm.got == vm.sent, f"stream {vm.index}: {len(vm.got)} of {len(vm.sent)}"
        await vm.stream.aclose()
    received = sorted(bytes(r.data) for r in app.streams if r.data)  # (not the probes)
    assert received == sorted(bytes(v.sent) for v in vms)  # each once: none reconnected
    assert prober.attempts > 10 and prober.refused == 0, vars(prober)
    moved = old.log().count("moved to the successor")  # (and a probe or two)
    assert moved >= STREAMS and new.log().count("taken over (") == moved
    assert "cut at the drain deadline" not in old.log() and "stays here" not in old.log()
    assert "took over from relay pid" in new.log() and "(unconfirmed)" not in new.log()
    gaps = sorted(v.longest_gap(t0, t1) for v in vms)
    load = f"{os.getloadavg()[0]:.1f}"
    print("\n" + next(x for x in old.log_lines() if "live streams moved" in x))
    print(
        f"\nhandoff of {STREAMS} live streams ({egress} egress): old process gone "
        f"{(t1 - t0) * 1000:.0f} ms after the successor started; longest echo gap per "
        f"stream: median "
        f"{gaps[len(gaps) // 2] * 1000:.0f} ms, max {gaps[-1] * 1000:.0f} ms; "
        f"{prober.attempts} connects during it, 0 refused (loadavg {load})"
    )


async def test_successor_dying_before_ready_leaves_live_streams_flowing(tmp_path: Path) -> None:
    """The would-be successor (this test) takes the sockets and dies before READY: the
    relay keeps every live stream, none moved, none cut, every byte exact."""
    app = Appliance(echo=True)
    vm_port, path = free_port(), tmp_path / "h.sock"
    with trio.fail_after(60):
        async with trio.open_nursery() as n, Daemons(tmp_path) as ds:
            toml = moving_relay_toml(await app.serve_tcp(n), vm_port, path, drain=30.0)
            relay = ds.add("relay", "esx-a", toml)
            await relay.start()
            progress = Changed()
            vms = await open_vms(vm_port, 20, progress)
            async with trio.open_nursery() as traffic:
                for vm in vms:
                    vm.start(traffic)
                await progress.wait_until(lambda: all(len(v.got) > 2000 for v in vms))
                taker = await handoff.take_over(path)
                assert taker is not None and taker.pid == relay.pid
                inherit.unclaimed()  # close our copies ...
                await taker.stream.aclose()  # ... and die before READY
                await relay.wait_log("carrying on")
                await flow_on_then_stop(vms, progress)
            assert relay.running
            n.cancel_scope.cancel()
    for vm in vms:
        assert vm.got == vm.sent and not vm.cut, f"stream {vm.index}"
        await vm.stream.aclose()
    assert "moved to the successor" not in relay.log()


async def test_handoff_moves_plain_streams_and_continues_tls_egress_ones(tmp_path: Path) -> None:
    """A TLS egress cannot pass (Python's ssl cannot export a session): those streams
    continue in a new connection from the successor (relay.pump_tls; the real
    appliance's side: tests/fault/test_relay_handoff_tls.py); the plain ones move
    exactly, at once."""
    app = Appliance(echo=True)
    ports = [free_port(), free_port()]
    with trio.fail_after(60):
        async with trio.open_nursery() as n, Daemons(tmp_path) as ds:
            toml = tls_appliance_toml(
                tmp_path, await app.serve_tcp(n), await serve_tls(app, n, tmp_path), ports
            )
            old, new = ds.add("relay", "esx-a", toml), ds.add("relay", "esx-a2", toml)
            await old.start()
            progress = Changed()
            plain = await open_vms(ports[0], 10, progress)
            tls = await open_vms(ports[1], 10, progress, first=10)
            async with trio.open_nursery() as traffic:
                for vm in plain + tls:
                    vm.start(traffic)
                await progress.wait_until(lambda: all(len(v.got) > 2000 for v in plain + tls))
                t0 = trio.current_time()
                await new.start()
                assert await old.wait_exit(timeout=DRAIN + 10) == 0
                t1 = trio.current_time()
                marks = [len(v.got) for v in plain + tls]
                await progress.wait_until(
                    lambda: all(len(v.got) > m + 2000 for v, m in zip(plain + tls, marks))
                )
                for vm in plain + tls:
                    vm.stop.set()
                await progress.wait_until(lambda: all(v.done for v in plain))
                # (a TLS egress has no half-close: the VM's EOF reaches it only with the
                # whole stream's end, so here every byte, not the EOF, is waited for)
                await progress.wait_until(lambda: all(not continued_exactly(app, v) for v in tls))
                traffic.cancel_scope.cancel()  # (the TLS ones' EOF never comes back)
            n.cancel_scope.cancel()
    for vm in plain:
        assert vm.got == vm.sent and not vm.cut, f"stream {vm.index}"
    for vm in tls:
        assert not (why := continued_exactly(app, vm)), f"stream {vm.index}: {why}"
    assert old.log().count("moved to the successor") == 20
    assert "drain deadline" not in old.log()
    gaps = sorted(v.longest_gap(t0, t1) for v in plain + tls)
    print(
        f"\nhandoff with 10 plain + 10 TLS-egress streams: all moved, longest echo gap "
        f"{gaps[-1] * 1000:.0f} ms (old process gone after {(t1 - t0) * 1000:.0f} ms)"
    )
