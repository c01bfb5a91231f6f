"""[endpoint.vcenter]: a relay's header speaks only for VMs that vCenter (govmomi's
vcsim, built by scripts/build-vcsim) says run on that relay's host."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from common.io.vsphere import VSphereTarget
from common.proto.link.header import OriginHeader, encode_header
from tests.relay.test_vsphere_route import VM, relocate, vcsim  # noqa: F401 (fixture)
from tests.support.waiting import wait_until
from vic.lab.esx_sim import EsxBehaviour, SimVM
from vic.lab.esx_sim import EsxConnection as EsxSim
from vspc.config import VCenterCheck
from vspc.endpoint import Endpoint
from vspc.placement import Placement, verdict
from vspc.service import VspcService

from .conftest import metric
from .test_endpoint_trust import send_and_wait_closed, start_appliance

START_HOST = "DC0_C0_H1"  # where vcsim puts VM (DC0_C0_RP0_VM0) with -host 2
OTHER_HOST = "DC0_C0_H0"


def vcenter_table(tmp_path: Path, vc: VSphereTarget) -> str:
    pw = tmp_path / "vc.pw"
    pw.write_text(vc.password + "\n")
    return (
        f'[endpoint.vcenter]\nurl = "http://{vc.host}:{vc.port}{vc.path}"\n'
        f'user = "{vc.user}"\npassword-file = "{pw}"\nrefresh = 300.0\nmin-refresh = 0.0\n'
    )


async def open_raw(sock: Path, host: str, vm: str, data: bytes) -> trio.SocketStream:
    s = await trio.open_unix_socket(str(sock))
    await s.send_all(encode_header(OriginHeader(host, vm, "tcp", "com1")) + data)
    return s


async def test_a_relay_speaks_only_for_vms_on_its_host(
    tmp_path: Path,
    vcsim: VSphereTarget,  # noqa: F811 (the fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    sock = tmp_path / "ep.sock"
    caplog.set_level(logging.WARNING, "vspc")
    async with trio.open_nursery() as n:
        svc: VspcService
        ep: Endpoint
        svc, ep = await start_appliance(
            n, tmp_path, f'unix = "{sock}"\n{vcenter_table(tmp_path, vcsim)}'
        )
        with trio.fail_after(60):
            good = await open_raw(sock, START_HOST, VM, b"from its host")
            await wait_until(lambda: any(c.bytes == 13 for c in svc.consoles.list()), 30)
            await send_and_wait_closed(await open_raw(sock, OTHER_HOST, VM, b"forged"), b"")
            await send_and_wait_closed(await open_raw(sock, START_HOST, "no-such-vm", b"?"), b"")
            assert metric(svc, "vspc_relayed_streams_total", kind="tcp", result="rejected") == 2
            # vMotion: the VM now runs on the other host, whose relay may speak for it
            await trio.to_thread.run_sync(relocate, vcsim, VM, OTHER_HOST)
            moved = await open_raw(sock, OTHER_HOST, VM, b"!")
            await wait_until(lambda: svc.consoles.find(VM).bytes_from_vm == 14, 30)
        messages = [r.getMessage() for r in caplog.records]
        assert any(
            f"vCenter places VM '{VM}' on {START_HOST}, not on '{OTHER_HOST}'" in m
            for m in messages
        ), messages
        assert any("vCenter knows no VM 'no-such-vm'" in m for m in messages)
        assert ep.placement is not None and ep.placement.queries <= 4
        await good.aclose()
        await moved.aclose()
        n.cancel_scope.cancel()


def test_verdict() -> None:
    snap = {"vm-1": frozenset({"esx-a"}), "423f5a1b2c3d4e5f60718293a4b5c6d7": frozenset({"esx-b"})}
    assert verdict(snap, "vm-1", "esx-a") is None
    assert verdict(snap, "42 3f 5a 1b 2c 3d 4e 5f-60 71 82 93 a4 b5 c6 d7", "esx-b") is None
    assert "not on 'esx-b'" in (verdict(snap, "vm-1", "esx-b") or "")
    assert "knows no VM" in (verdict(snap, "VM-1", "esx-a") or "")
    assert "has not answered" in (verdict(None, "vm-1", "esx-a", "refused") or "")


async def test_an_unreachable_vcenter_refuses_every_vm() -> None:
    """Fail closed: no placement snapshot, no VM; the reason says why."""
    with trio.socket.socket() as probe:  # a port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    placement = Placement(VCenterCheck(url=f"http://127.0.0.1:{port}/sdk", min_refresh=60.0))
    with trio.fail_after(30):
        reason = await placement.check("vm-1", "esx-a")
        assert reason is not None and "vCenter has not answered yet" in reason
        assert "connect" in reason.lower(), reason
        assert await placement.check("vm-1", "esx-a") is not None
    assert placement.queries == 1  # a miss asks again only after min-refresh
    await placement.aclose()


def vm_instance_uuid(vc: VSphereTarget, vm_name: str) -> str:
    from pyVim.connect import Disconnect, SmartConnect
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
            content.rootFolder, [vim.VirtualMachine], True
        )
        found = [o for o in view.view if o.name == vm_name]
        view.Destroy()
        return str(found[0].config.instanceUuid)
    finally:
        Disconnect(si)


async def relayed_telnet(n: trio.Nursery, sock: Path, host: str, vm: SimVM) -> EsxSim:
    """ESX's Telnet conversation relayed through the endpoint (kind ``vspc``) from
    the relay on ``host``; the stream names no VM until ESX sends VM-VC-UUID."""
    s = await trio.open_unix_socket(str(sock))
    await s.send_all(encode_header(OriginHeader(host, "esx-10.0.0.9", "vspc", "")))
    conn = EsxSim(s, vm, EsxBehaviour(wait_ready=False))
    n.start_soon(conn._reader)
    await conn._start()
    return conn


async def test_relayed_telnet_names_only_vms_on_its_host(
    tmp_path: Path,
    vcsim: VSphereTarget,  # noqa: F811 (the fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Item 6 for Telnet: once ESX names the VM, a relayed stream from a host that
    vCenter does not place it on is closed (``vspc_telnet_refused_total{reason=
    "placement"}``); from the VM's own host it becomes the VM's console."""
    sock = tmp_path / "ep.sock"
    caplog.set_level(logging.WARNING, "vspc")
    uuid = await trio.to_thread.run_sync(vm_instance_uuid, vcsim, VM)
    vm = SimVM(uuid=uuid, name=VM)
    async with trio.open_nursery() as n:
        svc, _ = await start_appliance(
            n, tmp_path, f'unix = "{sock}"\n{vcenter_table(tmp_path, vcsim)}'
        )
        with trio.fail_after(60):
            forged = await relayed_telnet(n, sock, OTHER_HOST, vm)
            await wait_until(
                lambda: metric(svc, "vspc_telnet_refused_total", reason="placement") == 1, 30
            )
            await forged.closed.wait()
            honest = await relayed_telnet(n, sock, START_HOST, vm)
            await honest.wait_ready(30)
            await honest.send_console(b"from its host")
            await wait_until(lambda: any(c.bytes == 13 for c in svc.consoles.list()), 30)
            assert metric(svc, "vspc_telnet_refused_total", reason="placement") == 1
            await honest.aclose()
        n.cancel_scope.cancel()
    assert any("refused: vCenter places VM" in r.getMessage() for r in caplog.records)
