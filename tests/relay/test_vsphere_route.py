"""The route follows the appliance VM in vSphere (govmomi's vcsim): relocate mid-transfer.

vcsim is built by scripts/build-vcsim (skipped with the reason when it is not there).
The appliance VM starts on host H1, reached through relay "B"; relocating it to H0
(RelocateVM_Task) must move the live stream to relay "C" and lose nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import trio

from common.io.vsphere import VSphereTarget
from common.link.route import Route, Router
from relay.vsphere_route import follow_appliance
from tests.common.link.link_harness import MiB, acceptor, pattern, roundtrip, small_config
from tests.relay.faultproxy import FaultProxy

VCSIM = Path(__file__).resolve().parents[2] / ".cache" / "vcsim" / "vcsim"
VM = "DC0_C0_RP0_VM0"


@pytest.fixture
def vcsim() -> Iterator[VSphereTarget]:
    if not os.access(VCSIM, os.X_OK):
        pytest.skip("vcsim not built: run scripts/build-vcsim (needs golang-go + govmomi source)")
    proc = subprocess.Popen(
        [str(VCSIM), "-l", "127.0.0.1:0", "-host", "2", "-stdin-eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        m = re.match(r"VCSIM_URL=(\S+)", proc.stdout.readline())
        if m is None:
            pytest.skip("vcsim did not start")
        u = urlparse(m.group(1))
        yield VSphereTarget(
            host=u.hostname or "127.0.0.1",
            port=u.port or 80,
            user="vic",
            password="vic",
            protocol="http",
            path=u.path,
        )
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.terminate()
        proc.wait(timeout=10)


def relocate(vc: VSphereTarget, vm_name: str, host_name: str) -> None:
    from pyVim.connect import Disconnect, SmartConnect
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    si = SmartConnect(
        host=vc.host,
        port=vc.port,
        user=vc.user,
        pwd=vc.password,
        protocol=vc.protocol,
        path=vc.path,
    )
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine, vim.HostSystem], True
        )
        objs = {o.name: o for o in view.view}
        view.Destroy()
        WaitForTask(objs[vm_name].RelocateVM_Task(vim.vm.RelocateSpec(host=objs[host_name])))
    finally:
        Disconnect(si)


async def test_route_follows_appliance_relocation_mid_transfer(vcsim: VSphereTarget) -> None:
    cfg = small_config()
    data = pattern(8 * MiB, seed=9)
    with trio.fail_after(60):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            via_b = FaultProxy(("127.0.0.1", acc.port))  # relay on DC0_C0_H1
            via_c = FaultProxy(("127.0.0.1", acc.port))  # relay on DC0_C0_H0
            await n.start(via_b.serve)
            await n.start(via_c.serve)
            routes = {
                "DC0_C0_H1": Route(via_b.address, tls=False, name="h1"),
                "DC0_C0_H0": Route(via_c.address, tls=False, name="h0"),
            }
            router = Router(Route("tcp:127.0.0.1:9", tls=False, name="unknown"), n, config=cfg)
            moved = trio.Event()
            host = await n.start(
                lambda task_status: follow_appliance(
                    router,
                    vcsim,
                    VM,
                    routes,
                    max_wait=1,
                    on_change=lambda h, r: moved.set() if h == "DC0_C0_H0" else None,
                    task_status=task_status,
                )
            )
            assert host == "DC0_C0_H1" and router.route == routes["DC0_C0_H1"]
            st = await router.open_stream(b"v")

            async def move(sent: int) -> None:
                if sent == 2 * MiB:
                    await trio.to_thread.run_sync(relocate, vcsim, VM, "DC0_C0_H0")
                    await moved.wait()
                    via_b.refuse()  # the old host's relay is gone

            assert await roundtrip(st, data, on_progress=move) == data
            assert router.route == routes["DC0_C0_H0"]
            assert via_b.forwarded > 0 and via_c.forwarded > 0
            assert st.attachments >= 2
            n.cancel_scope.cancel()
