"""Lab scenario 4: the relay mesh, a link cut and the appliance moving.

Three simulated ESX hosts, each with its relay daemon (in this process):

* **esx-m1** runs the containerVMs. Its relay forwards their streams as
  resumable streams over one mutually authenticated TLS 1.3 peer link (our own
  CA, ``vic://host/...`` identities) to the relay on the appliance's host;
* **esx-m2** runs the appliance at first: its relay ends TLS and forwards the
  link to the appliance's link endpoint (the vspc ``[[endpoint.link]]`` socket,
  a trusted transport), where the sessions end;
* **esx-m3** is where the appliance moves: same role.

The link from esx-m1 to esx-m2 passes a proxy the lab cuts mid-stream (every
stream resumes over a new link). Later the appliance "moves": the lab tells
esx-m1's relay over its admin socket (as ``vic relay route set`` does) that the
appliance is now reached through esx-m3; every live stream leaves the old path
and resumes over the new one. Each console is read through the real attach
socket and must hold every byte once and in order; bytes typed into a console
after the move must reach the VM.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.lowlevel

from common.io import certs
from common.link.config import LinkTuning, PeerConfig, PeerListen, PeerRoute, PeerTls
from relay.admin import admin_request
from relay.config import EgressConfig, MetricsConfig, RelayConfig, TcpListener, TimeoutsConfig
from relay.daemon import RelayDaemon
from vic.lab.cutproxy import CutProxy
from vic.lab.polling import wait_until
from vic.lab.relay_scenario import raw_vm
from vic.lab.report import ConsoleCheck
from vspc.core.identity import PortKey
from vspc.endpoint import Endpoint
from vspc.service import VspcService

VMS = ("vm-mesh-1", "vm-mesh-2", "vm-mesh-3")
TUNING = LinkTuning(ping_interval=1.0, dead_after=5.0, resume_timeout=30.0)


def make_pki(root: Path) -> dict[str, PeerTls]:
    certs.init_ca(root, key_type="ed25519")
    out = {}
    for host in ("esx-m1", "esx-m2", "esx-m3"):
        res = certs.issue(root, "host", host, key_type="ed25519", force=True)
        out[host] = PeerTls(res.cert_path, res.key_path, root / certs.CA_CERT)
    return out


def appliance_host_config(host: str, tls: PeerTls, link_socket: Path) -> RelayConfig:
    """The relay on a host that runs the appliance: accept esx-m1, forward its link."""
    return RelayConfig(
        host=host,
        egress={"default": EgressConfig(kind="unix", path=link_socket)},  # unused: forwarding
        metrics=MetricsConfig(enabled=False),
        peer=PeerConfig(
            tls=tls,
            link=TUNING,
            listen=[
                PeerListen(
                    "tcp:127.0.0.1:0",
                    allowed_peers=["vic://host/esx-m1"],
                    forward=f"unix:{link_socket}",
                )
            ],
        ),
    )


def vm_host_config(tls: PeerTls, via: str, admin: Path) -> RelayConfig:
    return RelayConfig(
        host="esx-m1",
        egress={"default": EgressConfig(kind="peer", route="appliance")},
        metrics=MetricsConfig(enabled=False),
        timeouts=TimeoutsConfig(retry_min=0.05, retry_max=0.5),
        tcp=tuple(TcpListener(name=vm, vm=vm, port=0, label="com1") for vm in VMS),
        peer=PeerConfig(
            tls=tls,
            link=TUNING,
            admin_socket=admin,
            routes={"appliance": PeerRoute(via, identity="vic://host/esx-m2")},
        ),
    )


def peer_address(d: RelayDaemon) -> str:
    host, port = d.mesh.bound()[0][:2]
    return f"tcp:{host}:{port}"


class _Drive:
    """The VMs writing on esx-m1, and the director: cut the link, then move the appliance."""

    def __init__(
        self,
        service: VspcService,
        checks: list[ConsoleCheck],
        lines: int,
        proxy: CutProxy,
        admin: Path,
        m1: RelayDaemon,
        m3: RelayDaemon,
    ) -> None:
        self.service = service
        self.checks = checks
        self.lines = lines
        self.proxy = proxy
        self.admin = admin
        self.m1 = m1
        self.m3 = m3
        self.progress = [0] * len(VMS)
        self.progressed = trio.lowlevel.ParkingLot()  # woken at each VM's next line
        self.cut_done = trio.Event()
        self.moved = trio.Event()

    async def run(self) -> None:
        with trio.move_on_after(120):
            async with trio.open_nursery() as vms:
                vms.start_soon(self.director)
                for i in range(len(VMS)):
                    vms.start_soon(self.vm, i)

    async def all_past(self, line: int) -> None:
        while min(self.progress) < line:
            await self.progressed.park()

    async def director(self) -> None:
        """Cut the link once every VM is a third through; move the appliance at two thirds."""
        await self.all_past(self.lines // 3)
        self.cut()
        await self.all_past(2 * self.lines // 3)
        await self.move()

    def cut(self) -> None:
        self.proxy.cut()
        for i, c in enumerate(self.checks):
            c.events.append(f"link esx-m1 -> esx-m2 cut (line {self.progress[i]})")
        self.cut_done.set()

    async def move(self) -> None:
        reply = await admin_request(
            self.admin,
            {
                "cmd": "route.set",
                "route": "appliance",
                "address": peer_address(self.m3),
                "identity": "vic://host/esx-m3",
            },
        )
        for i, c in enumerate(self.checks):
            c.events.append(
                f"appliance moved to esx-m3: route set over the admin socket "
                f"(line {self.progress[i]}, {reply.get('streams_moved')} streams moved)"
            )
            c.path = "esx-m1 relay =TLS link=> esx-m2, then esx-m3 relay -> appliance"
        self.moved.set()

    async def vm(self, i: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", self.m1.bound[VMS[i]][1])

        def on_line(line: int) -> None:
            self.progress[i] = line
            self.progressed.unpark_all()

        await raw_vm(
            self.service,
            self.checks[i],
            PortKey(VMS[i], "com1"),
            stream,
            self.lines,
            on_line=on_line,
            before_typing=self.moved,
            typed=f"after the move {VMS[i]}\r".encode() + b"\xff\x00",
        )


async def run(
    service: VspcService, endpoint: Endpoint, workdir: Path, *, seed: int, lines: int
) -> list[ConsoleCheck]:
    links = endpoint.links
    assert links is not None and links.bound, "the lab appliance has no link endpoint"
    link_socket = Path(links.bound[0])
    d = workdir / "mesh"
    d.mkdir(exist_ok=True)
    tls = make_pki(d / "pki")
    checks = [ConsoleCheck(vm, "esx-m1 relay =TLS link=> esx-m2 relay -> appliance") for vm in VMS]
    async with trio.open_nursery() as nursery:
        m2: RelayDaemon = await nursery.start(
            RelayDaemon(appliance_host_config("esx-m2", tls["esx-m2"], link_socket)).run
        )
        m3: RelayDaemon = await nursery.start(
            RelayDaemon(appliance_host_config("esx-m3", tls["esx-m3"], link_socket)).run
        )
        proxy = CutProxy(tuple(m2.mesh.bound()[0][:2]))
        await nursery.start(proxy.serve)
        admin = d / "esx-m1.sock"
        m1: RelayDaemon = await nursery.start(
            RelayDaemon(vm_host_config(tls["esx-m1"], proxy.address, admin)).run
        )
        router = m1.mesh.routers["appliance"]
        await _Drive(service, checks, lines, proxy, admin, m1, m3).run()
        with trio.move_on_after(10):  # the VMs closed: let every stream end cleanly
            await m1.wait_active_at_most(0)
            await wait_until(lambda: not len(links.table))
        checks[-1].events.append(
            f"esx-m1's relay opened {router.links_opened} peer links for all {len(VMS)} streams, "
            f"{router.route_changes} route change, {proxy.cuts} cut"
        )
        nursery.cancel_scope.cancel()
    return checks
