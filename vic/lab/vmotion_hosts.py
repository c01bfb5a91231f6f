"""The hosts of the lab's vMotion: two ESX hosts' relays and the lab's vCenter.

* **esx-a** runs the VM at first; its relay (``vic relay``'s daemon, in this
  process) has a pipe ingress for the VM's session and forwards it straight to the
  appliance's endpoint socket;
* **esx-b** is where the VM moves; its relay reaches the appliance over the peer
  mesh: a mutually authenticated TLS 1.3 link (the lab's own CA) to the relay on the
  appliance's host, **esx-app**, which forwards the link whole to the appliance's
  link endpoint, where the streams end;
* the lab's **vCenter inventory** says which host each VM runs on. The appliance's
  endpoint asks it (``vspc.placement.Placement``, the same cache and refresh rules
  as with ``[endpoint.vcenter]``; only the query reads the lab's table instead of
  the vSphere API) whether a relay may speak for a VM. A vMotion updates it at the
  switchover, as vCenter's ``runtime.host`` does. (Any ``VCenter`` will do: the
  tests run the same move with govmomi's vcsim, and its hosts' names.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import trio

from common.io import certs
from common.io.vsphere import VSphereConn, VSphereTarget
from common.link.config import LinkTuning, PeerConfig, PeerListen, PeerRoute, PeerTls
from common.proto.identity import vm_key
from relay.config import EgressConfig, MetricsConfig, PipeListener, RelayConfig, TimeoutsConfig
from relay.daemon import RelayDaemon
from vspc.config import VCenterCheck
from vspc.placement import Placement

T = TypeVar("T")
TUNING = LinkTuning(ping_interval=1.0, dead_after=5.0, resume_timeout=30.0)
TIMEOUTS = TimeoutsConfig(retry_min=0.05, retry_max=0.5)
APP_HOST = "esx-app"  # the host the appliance VM runs on (its relay ends the peer links)


class _InventoryConn(VSphereConn):
    """No vSphere session: the "query" runs against the lab's table, in this thread."""

    def __init__(self) -> None:
        super().__init__(VSphereTarget(host="lab-inventory", port=0, user="", password=""))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    def reset(self) -> None:
        pass

    def disconnect(self) -> None:
        pass


class VCenter(Placement):
    """The endpoint's placement (``[endpoint.vcenter]``'s cache and refresh rules) that
    also keeps every refusal (VM, host, reason), and moves VMs as vMotion does."""

    def __init__(self, cfg: VCenterCheck, conn: VSphereConn | None = None) -> None:
        super().__init__(cfg, conn)
        self.refusals: deque[tuple[str, str, str]] = deque(maxlen=100)  # the latest
        self._refused = trio.lowlevel.ParkingLot()

    async def vmotion(self, vm: str, host: str) -> None:
        """Place ``vm`` on ``host`` from now on, as vCenter does at the switchover."""
        raise NotImplementedError

    async def check(self, vm: str, host: str) -> str | None:
        reason = await super().check(vm, host)
        if reason is not None:
            self.refusals.append((vm, host, reason))
            self._refused.unpark_all()
        return reason

    async def refused(self, vm: str, host: str) -> str:
        """Wait until a relay on ``host`` is refused for ``vm``; the reason."""
        while True:
            for v, h, reason in self.refusals:
                if (v, h) == (vm, host):
                    return reason
            await self._refused.park()


class Inventory(VCenter):
    """The lab's vCenter: VM name -> the host it runs on, a table in this process.

    Trusted ``refresh`` seconds; asked again at once (``min-refresh`` 0) when a VM
    seems to be on another host."""

    def __init__(self, hosts: dict[str, str], refresh: float = 30.0) -> None:
        cfg = VCenterCheck(url="http://lab-inventory/sdk", refresh=refresh, min_refresh=0.0)
        super().__init__(cfg, _InventoryConn())
        self.hosts = dict(hosts)

    async def vmotion(self, vm: str, host: str) -> None:
        self.hosts[vm] = host

    def _collect(self) -> dict[str, frozenset[str]]:
        return {vm_key(vm): frozenset({host}) for vm, host in self.hosts.items()}


def make_pki(root: Path, hosts: Iterable[str]) -> dict[str, PeerTls]:
    certs.init_ca(root, key_type="ed25519")
    out = {}
    for host in hosts:
        res = certs.issue(root, "host", host, key_type="ed25519", force=True)
        out[host] = PeerTls(res.cert_path, res.key_path, root / certs.CA_CERT)
    return out


def session_ingress(host: str, vm: str, path: Path) -> PipeListener:
    """The VM's session as the host's relay receives it: a Unix socket it listens on."""
    return PipeListener(name=f"{vm}-{host}", vm=vm, path=path, label="session")


def direct_host(host: str, vm: str, ingress: Path, endpoint_sock: Path) -> RelayConfig:
    """A host whose relay forwards straight to the appliance's endpoint socket."""
    return RelayConfig(
        host=host,
        egress={"default": EgressConfig(kind="unix", path=endpoint_sock)},
        metrics=MetricsConfig(enabled=False),
        timeouts=TIMEOUTS,
        pipe=(session_ingress(host, vm, ingress),),
    )


def mesh_host(host: str, vm: str, ingress: Path, tls: PeerTls, via: str) -> RelayConfig:
    """A host whose relay reaches the appliance over a TLS peer link to esx-app."""
    return RelayConfig(
        host=host,
        egress={"default": EgressConfig(kind="peer", route="appliance")},
        metrics=MetricsConfig(enabled=False),
        timeouts=TIMEOUTS,
        pipe=(session_ingress(host, vm, ingress),),
        peer=PeerConfig(
            tls=tls,
            link=TUNING,
            routes={"appliance": PeerRoute(via, identity=f"vic://host/{APP_HOST}")},
        ),
    )


def appliance_host(tls: PeerTls, peers: Iterable[str], link_socket: Path) -> RelayConfig:
    """The relay on the appliance's host: end TLS, forward each link to the appliance."""
    return RelayConfig(
        host=APP_HOST,
        egress={"default": EgressConfig(kind="unix", path=link_socket)},  # unused: forwarding
        metrics=MetricsConfig(enabled=False),
        peer=PeerConfig(
            tls=tls,
            link=TUNING,
            listen=[
                PeerListen(
                    "tcp:127.0.0.1:0",
                    allowed_peers=[f"vic://host/{h}" for h in peers],
                    forward=f"unix:{link_socket}",
                )
            ],
        ),
    )


def peer_address(d: RelayDaemon) -> str:
    host, port = d.mesh.bound()[0][:2]
    return f"tcp:{host}:{port}"


async def start_hosts(
    nursery: trio.Nursery, d: Path, vm: str, workdir: Path, hosts: tuple[str, str]
) -> dict[str, RelayDaemon]:
    """``hosts[0]`` (direct), esx-app and ``hosts[1]`` (over the mesh); the VM's
    ingress on each is ``ingress_path(d, host)``. The appliance's sockets are in
    ``workdir`` (``endpoint.sock``, ``link.sock``)."""
    a, b = hosts
    tls = make_pki(d / "pki", (b, APP_HOST))
    app: RelayDaemon = await nursery.start(
        RelayDaemon(appliance_host(tls[APP_HOST], (b,), workdir / "link.sock")).run
    )
    a_cfg = direct_host(a, vm, ingress_path(d, a), workdir / "endpoint.sock")
    b_cfg = mesh_host(b, vm, ingress_path(d, b), tls[b], peer_address(app))
    return {
        a: await nursery.start(RelayDaemon(a_cfg).run),
        b: await nursery.start(RelayDaemon(b_cfg).run),
        APP_HOST: app,
    }


def ingress_path(d: Path, host: str) -> Path:
    """Where ``host``'s relay takes the lab VM's session (one VM per lab directory)."""
    return d / f"in-{host}.sock"
