"""A tethered VM's sealed session resumes exactly once across the lab's vMotion.

Real pieces: the appliance (vSPC, endpoint, link endpoint, sessions) in this
process, a ``vic agent`` process with ``[session]`` on, three relay daemons
(esx-a direct; esx-b over a TLS peer link to esx-app, which forwards the link to
the appliance), and the VM's lab-owned device that a move switches to the other
host, resetting the live connection as a vMotion resets vsock connections.
``vic console exec -i`` (the CLI, a process) streams lines both ways across a move
to esx-b and back to esx-a.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from common.io.unixlisten import UnixListener, open_unix_listener
from common.io.vsphere import VSphereTarget
from tests.relay.test_vsphere_route import VM as VCSIM_VM
from tests.relay.test_vsphere_route import relocate, vcsim  # noqa: F401 (fixture)
from tests.support.waiting import wait_until
from tests.vspc.test_endpoint_placement import OTHER_HOST, START_HOST
from vic.lab.appliance_config import lab_config
from vic.lab.session_checks import vic
from vic.lab.vm_device import VmDevice
from vic.lab.vmotion_hosts import Inventory, VCenter
from vic.lab.vmotion_scenario import (
    EXIT,
    LINES,
    VM,
    ExecRun,
    Progress,
    VmotionLab,
    exec_across,
    old_host_refused,
)
from vspc.config import VCenterCheck
from vspc.endpoint import Endpoint
from vspc.placement import verdict
from vspc.service import VspcService
from vspc.sessions.api import SessionsApi


@asynccontextmanager
async def running_lab(tmp_path: Path, **kw: Any) -> AsyncIterator[VmotionLab]:
    """The appliance in this process, and the VM running on its first host."""
    async with trio.open_nursery() as nursery:
        service: VspcService = await nursery.start(VspcService(lab_config(tmp_path)).run)
        endpoint: Endpoint = await nursery.start(Endpoint(service).run)
        lab = VmotionLab(service, endpoint, tmp_path, **kw)
        try:
            with trio.fail_after(60):
                await lab.start(nursery)
            yield lab
            await lab.wind_down()
        finally:
            await lab.aclose()
            nursery.cancel_scope.cancel()


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[VmotionLab]:
    async with running_lab(tmp_path) as lab:
        yield lab


def metric(lab: VmotionLab, name: str, **labels: str) -> float:
    return lab.service.metrics.registry.get_sample_value(name, labels) or 0.0


def counts(lab: VmotionLab) -> tuple[int, float, float, float]:
    """Connections that carried the session; execs started, exited; bytes it delivered."""
    assert lab.service.sessions is not None
    return (
        SessionsApi(lab.service.sessions).status(VM).connections,
        metric(lab, "vspc_session_execs_started_total"),
        metric(lab, "vspc_session_execs_finished_total", outcome="exited"),
        metric(lab, "vspc_session_bytes_total", direction="tether_to_appliance"),
    )


async def test_exec_i_across_a_vmotion_there_and_back(lab: VmotionLab) -> None:
    assert (await vic(lab.workdir, "exec", VM, "--", "true")).returncode == 0  # connected
    before = counts(lab)
    run = await exec_across(lab, ("esx-b", "esx-a"))
    after = counts(lab)
    # every byte once, in order, both ways; stderr apart; the exit status once
    assert bytes(run.out) == run.sent, (len(run.out), len(run.sent))
    assert bytes(run.err) == b"stdin closed\n"
    assert run.code == EXIT
    # the same session, resumed once per move; one exec, its exit once; each output
    # byte delivered by the session core once
    assert after[0] - before[0] == 2, (before, after)
    assert (after[1] - before[1], after[2] - before[2]) == (1, 1)
    assert after[3] - before[3] == len(run.out) + len(run.err)
    # both moves happened mid-stream, each resetting the live connection
    assert len(run.moves) == 2, run.moves
    assert run.moves[0].startswith("esx-a -> esx-b: 1 connection(s) reset at line ")
    assert run.moves[1].startswith("esx-b -> esx-a: 1 connection(s) reset at line ")
    at = [int(m.rsplit(" ", 1)[-1]) for m in run.moves]
    assert 0 < at[0] < at[1] < LINES, at
    # the session went esx-a, then esx-b (over the peer mesh), then esx-a again
    assert lab.device.resets == 2
    assert lab.device.forwarded["esx-a"] >= 2 and lab.device.forwarded["esx-b"] >= 1
    assert lab.relays["esx-b"].mesh.routers["appliance"].links_opened >= 1
    assert isinstance(lab.vcenter, Inventory) and lab.vcenter.hosts[VM] == "esx-a"
    # the host it left (esx-b, over the mesh) may no longer speak for the VM ...
    reason = await old_host_refused(lab, "esx-b")
    assert f"vCenter places VM '{VM}' on esx-a, not on 'esx-b'" in reason
    # ... and the session still answers through esx-a
    r = await vic(lab.workdir, "exec", VM, "--", "sh", "-c", "echo still here; exit 4")
    assert (r.stdout, r.returncode) == (b"still here\n", 4)


async def test_moved_again_while_the_tether_reconnects(lab: VmotionLab) -> None:
    """vMotion ping-pong: each next move resets the tether's new connection the
    moment the device forwards it (before its handshake is through); the session
    resumes on the connection after the last move, every byte once."""

    async def bounce(lab: VmotionLab, run: ExecRun, progress: Progress) -> None:
        await progress.at_least(LINES // 3)
        hosts = ("esx-b", "esx-a", "esx-b")
        for k, host in enumerate(hosts):
            want = lab.device.forwarded[host] + 1
            run.moves.append(await lab.vmotion(host))
            if k < len(hosts) - 1:  # the tether's next connection, through ``host``
                await lab.device.forwarded_to(host, want)

    run = await exec_across(lab, ("esx-b", "esx-a", "esx-b"), director=bounce)
    assert bytes(run.out) == run.sent, (len(run.out), len(run.sent))
    assert (bytes(run.err), run.code) == (b"stdin closed\n", EXIT)
    assert [m.split(":")[1] for m in run.moves] == [" 1 connection(s) reset"] * 3, run.moves
    assert lab.device.resets == 3 and lab.device.host == "esx-b"
    assert lab.device.forwarded["esx-a"] >= 2 and lab.device.forwarded["esx-b"] >= 2


async def test_the_old_host_is_refused_once_the_vm_moved(lab: VmotionLab) -> None:
    """esx-a speaks for the VM before the move, not after; esx-b only after."""
    refusals = len(lab.vcenter.refusals)
    r = await vic(lab.workdir, "exec", VM, "--", "echo", "on esx-a")
    assert r.stdout == b"on esx-a\n"
    assert len(lab.vcenter.refusals) == refusals  # nothing refused so far
    assert "on esx-a, not on 'esx-b'" in await old_host_refused(lab, "esx-b")
    await lab.vmotion("esx-b")
    r = await vic(lab.workdir, "exec", VM, "--", "echo", "on esx-b")
    assert (r.stdout, r.returncode) == (b"on esx-b\n", 0)
    assert lab.device.forwarded["esx-b"] >= 1 and lab.device.host == "esx-b"
    assert "on esx-b, not on 'esx-a'" in await old_host_refused(lab, "esx-a")


async def test_a_move_resets_live_connections_and_redirects_new_ones(tmp_path: Path) -> None:
    """The device alone: bytes go to the VM's current host; a move closes the live
    connection at both ends and the next connection reaches the new host."""
    got: dict[str, trio.MemorySendChannel[trio.SocketStream]] = {}
    recv: dict[str, trio.MemoryReceiveChannel[trio.SocketStream]] = {}
    for host in ("a", "b"):
        got[host], recv[host] = trio.open_memory_channel(4)
    async with trio.open_nursery() as n:
        for host in ("a", "b"):
            listener = await open_unix_listener(tmp_path / f"{host}.sock")
            n.start_soon(_accept_into, listener, got[host])
        dev = VmDevice("vm", tmp_path / "dev.sock", {h: tmp_path / f"{h}.sock" for h in "ab"}, "a")
        await n.start(dev.serve)
        with trio.fail_after(10):
            guest = await trio.open_unix_socket(str(dev.path))
            await guest.send_all(b"to a")
            relay_a = await recv["a"].receive()
            assert await relay_a.receive_some(10) == b"to a"
            await relay_a.send_all(b"from a")
            assert await guest.receive_some(10) == b"from a"
            assert dev.move("b") == 1
            assert await guest.receive_some(10) == b""  # reset: the guest end is closed
            assert await relay_a.receive_some(10) == b""  # and so is the relay end
            guest = await trio.open_unix_socket(str(dev.path))
            await guest.send_all(b"to b")
            relay_b = await recv["b"].receive()
            assert await relay_b.receive_some(10) == b"to b"
        assert dict(dev.forwarded) == {"a": 1, "b": 1} and dev.resets == 1
        n.cancel_scope.cancel()


async def _accept_into(
    listener: UnixListener, out: trio.MemorySendChannel[trio.SocketStream]
) -> None:
    while True:
        await out.send(await listener.accept())


class VcsimVCenter(VCenter):
    """govmomi's vcsim as vCenter: placement from the vSphere API (``runtime.host``),
    a vMotion is ``RelocateVM_Task``."""

    def __init__(self, vc: VSphereTarget, password_file: Path) -> None:
        url = f"http://{vc.host}:{vc.port}{vc.path}"
        check = VCenterCheck(url, vc.user, password_file, refresh=300.0, min_refresh=0.0)
        super().__init__(check)
        self.vc = vc

    async def vmotion(self, vm: str, host: str) -> None:
        await trio.to_thread.run_sync(relocate, self.vc, vm, host)


async def test_exec_i_across_a_vmotion_that_vcenter_records(
    tmp_path: Path,
    vcsim: VSphereTarget,  # noqa: F811 (the fixture)
) -> None:
    """The same move with the placement the appliance gets from a vCenter (vcsim's
    VM and hosts): vCenter relocates the VM, the session resumes through the new
    host, and the vCenter-backed check refuses the old one."""
    pw = tmp_path / "vc.pw"
    pw.write_text(vcsim.password + "\n")
    vc = VcsimVCenter(vcsim, pw)
    async with running_lab(
        tmp_path, vm=VCSIM_VM, hosts=(START_HOST, OTHER_HOST), vcenter=vc
    ) as lab:
        run = await exec_across(lab, (OTHER_HOST,), lines=600)
        assert (bytes(run.out) == run.sent, bytes(run.err), run.code) == (
            True,
            b"stdin closed\n",
            EXIT,
        )
        assert run.moves[0].startswith(f"{START_HOST} -> {OTHER_HOST}: 1 connection(s) reset")
        # the reset tether reconnects through the new host (at once if bytes were still
        # in flight at the move, else when it next reconnects: not always before the exit)
        await wait_until(lambda: lab.device.forwarded[OTHER_HOST] >= 1, 30, "via the new host")
        # The relay forwarding that stream is not the endpoint having checked it: until the
        # endpoint has asked vCenter again, its snapshot (trusted for ``refresh``) still
        # places the VM on the old host, and a stream from there would be let through.
        await wait_until(
            lambda: verdict(vc.snapshot, VCSIM_VM, OTHER_HOST) is None, 30, "the new placement"
        )
        reason = await old_host_refused(lab, START_HOST)
        assert f"vCenter places VM '{VCSIM_VM}' on {OTHER_HOST}, not on '{START_HOST}'" in reason
        assert vc.queries >= 2  # asked again once the VM showed up on the other host
