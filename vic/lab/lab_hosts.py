"""The hosts of the lab that stays up (``vic lab up``): one detached process.

``python -m vic.lab.lab_hosts --dir D --esx-port P --notify SOCK`` runs, built with
the one-shot lab's builders, what sits between the VMs and the appliance (``vic
vspc``, a process of its own that ``vic lab up`` started first):

* **esx-a**, a simulated ESX host: VM ``vm-esx-1`` speaks Telnet and VMware's
  extension 232 straight to the appliance's vSPC port;
* **esx-c**, a relay: ``vm-agent-1`` (hybrid vsock) and, with socat, ``vm-agent-2``
  (a tty session on a serial line: socat's pty pair, the relay's serial ingress on
  the host end) run ``vic agent`` as processes of their own, both tethered (their
  agents have ``[session]`` on, so each console is a sealed session that ``vic
  console exec`` and ``vic console logs`` reach),
  each running a real process that the appliance side here launches through
  guestinfo (the file store in ``D/ag/guestinfo``);
* **esx-m1 -> esx-m2**, the relay mesh: ``vm-mesh-1`` on esx-m1 reaches the appliance
  over a TLS peer link that esx-m2's relay forwards to the appliance's link socket
  (esx-m1's admin socket ``D/mesh/esx-m1.sock`` takes ``vic relay route``).

Every VM greets with ``hello from <vm>`` and answers each line typed into its
console with ``<vm> read: <line>``. Once every console is listed by the appliance
it sends ``READY=1`` with the VMs and the relays' metrics ports to ``SOCK``
(sd_notify's datagram form); SIGTERM stops the agents and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from common.ops.daemon import stop_signal
from common.proto import guestinfo as gi
from relay.config import HvsockListener, MetricsConfig, RelayConfig, SerialListener
from relay.daemon import RelayDaemon
from vic.lab import lab_state, lab_tether
from vic.lab.agent_plans import VMPlan
from vic.lab.agent_processes import HVSOCK_PORT, STEP_TIMEOUT, agent_toml, start_agent, stop
from vic.lab.agent_scenario import SerialLine, relay_listeners
from vic.lab.esx_sim import EsxConnection, SimVM
from vic.lab.mesh_scenario import VMS as MESH_VMS
from vic.lab.mesh_scenario import appliance_host_config, make_pki, peer_address, vm_host_config
from vic.lab.polling import wait_until
from vic.lab.relay_scenario import relay_config
from vspc.console.client import ConsoleClientError, Endpoint, list_consoles
from vspc.guestinfo_watch import FileStoreWatcher, configure_session, go_ahead, wait_for_started

log = logging.getLogger("vic.lab.hosts")

ECHO_SH = (
    'echo "hello from $VM"; while read -r line; do echo "$VM read: $line"; done; '
    'echo "$VM: stdin closed"'
)
READY_TIMEOUT = 90.0
TETHERED = ("vm-agent-1", "vm-agent-2")  # [session] on: exec and logs, no raw console
VM_PATHS = {  # each VM of the lab and how its console reaches the appliance
    "vm-esx-1": "simulated ESX host esx-a -> vSPC (Telnet + extension 232)",
    "vm-mesh-1": "relay esx-m1 =TLS peer link=> relay esx-m2 -> appliance",
    "vm-agent-1": "vic agent (sh), tethered, hybrid vsock -> relay esx-c -> appliance",
    "vm-agent-2": "vic agent (sh on a tty), tethered, serial line -> relay esx-c -> appliance",
}


def _tethered(listener: object) -> object:
    """A tethered VM's relay listener: its streams are the VM's sealed session."""
    if isinstance(listener, HvsockListener | SerialListener) and listener.vm in TETHERED:
        return dataclasses.replace(listener, label="session")
    return listener


def with_metrics(cfg: RelayConfig) -> RelayConfig:
    return dataclasses.replace(cfg, metrics=MetricsConfig(enabled=True, host="127.0.0.1", port=0))


def agent_plans(serial: bool) -> list[VMPlan]:
    """The lab's agent VMs: each runs a shell that greets and echoes what it reads."""
    out = []
    for i, channel in enumerate(("hybrid", "serial") if serial else ("hybrid",), 1):
        vm = f"vm-agent-{i}"
        session = gi.SessionConfig(
            id=f"lab-{vm}",
            path="/bin/sh",
            args=("sh", "-c", ECHO_SH),
            env=(f"VM={vm}",),
            openstdin=True,
            tty=channel == "serial",
            runblock=True,
        )
        out.append(VMPlan(vm, channel, session))
    return out


async def echo_lines(
    name: str,
    send: Callable[[bytes], Awaitable[None]],
    receive: Callable[[], Awaitable[bytes]],
) -> None:
    """A simulated VM's console: a greeting, then ``<vm> read: <line>`` for each line.
    A broken console ends this VM only (logged), not the lab."""
    try:
        await send(f"hello from {name}\r\n".encode())
        buf = b""
        while data := await receive():
            buf += data
            *lines, buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            for line in lines:
                await send(f"{name} read: ".encode() + line + b"\r\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
        log.warning("%s: console lost: %s", name, e)
        return
    log.warning("%s: console closed", name)


class Hosts:
    def __init__(self, d: Path, esx_port: int) -> None:
        self.d = d
        self.esx_port = esx_port
        self.vms: list[str] = []
        self.metrics: dict[str, int] = {}
        self.agents: list[trio.Process] = []
        self.tethered: list[str] = []
        self.serial = SerialLine()

    async def relay(self, nursery: trio.Nursery, cfg: RelayConfig) -> RelayDaemon:
        daemon: RelayDaemon = await nursery.start(RelayDaemon(with_metrics(cfg)).run)
        if daemon.metrics_port:
            self.metrics[cfg.host or "relay"] = daemon.metrics_port
        return daemon

    async def esx_a(self, nursery: trio.Nursery) -> None:
        vm = SimVM.random(random.Random(1), "vm-esx-1")
        conn = await EsxConnection.open(nursery, "127.0.0.1", self.esx_port, vm=vm, label="com1")
        nursery.start_soon(echo_lines, vm.name, conn.send_console, conn.receive_console)
        self.vms.append(vm.name)

    async def mesh(self, nursery: trio.Nursery) -> None:
        d = self.d / "mesh"
        d.mkdir(exist_ok=True)
        tls = make_pki(d / "pki")
        m2 = await self.relay(
            nursery, appliance_host_config("esx-m2", tls["esx-m2"], self.d / "link.sock")
        )
        m1 = await self.relay(
            nursery, vm_host_config(tls["esx-m1"], peer_address(m2), d / "esx-m1.sock")
        )
        vm = MESH_VMS[0]
        stream = await trio.open_tcp_stream("127.0.0.1", m1.bound[vm][1])
        nursery.start_soon(echo_lines, vm, stream.send_all, stream.receive_some)
        self.vms.append(vm)

    async def esx_c(self, nursery: trio.Nursery) -> None:
        d = self.d / "ag"
        (d / "guestinfo").mkdir(parents=True, exist_ok=True)
        await self.serial.open(d)
        if self.serial.socat is not None:
            lab_state.record(self.d, "socat", self.serial.socat.pid)
        todo = agent_plans(self.serial.pair is not None)
        listeners = relay_listeners(d, todo, self.serial.pair)
        listeners = {k: tuple(_tethered(x) for x in group) for k, group in listeners.items()}
        await self.relay(nursery, relay_config("esx-c", self.d / "endpoint.sock", listeners))
        watcher = FileStoreWatcher(d / "guestinfo")
        async with trio.open_nursery() as starting:
            for plan in todo:
                starting.start_soon(self.agent, watcher, d, plan)

    async def agent(self, watcher: FileStoreWatcher, d: Path, plan: VMPlan) -> None:
        """What the appliance does to start a container: the session config, the
        agent (the VM powering on), the go-ahead, then ``started``."""
        conf = agent_toml(d, plan, self.serial.pair[0] if self.serial.pair else None)
        tethered = plan.vm in TETHERED
        if tethered:
            with conf.open("a") as f:
                f.write("[session]\nenabled = true\nbackoff-max = 0.5\n")
            if plan.channel == "hybrid":  # (a serial line is relayed from the start)
                ingress = Path(f"{d / plan.vm}.vsock_{HVSOCK_PORT}")
                await lab_tether.secret_written(watcher, plan.vm, ingress)
        await configure_session(watcher, plan.vm, plan.session)
        proc = await start_agent(conf)
        self.agents.append(proc)
        lab_state.record(self.d, plan.vm, proc.pid)
        await go_ahead(watcher, plan.vm, plan.session.id)
        await wait_for_started(watcher, plan.vm, plan.session.id, STEP_TIMEOUT)
        if tethered:
            await lab_tether.exec_works(self.d / "console.sock", plan.vm, STEP_TIMEOUT)
            self.tethered.append(plan.vm)
        self.vms.append(plan.vm)

    async def consoles_listed(self) -> None:
        ep = Endpoint(socket=self.d / "console.sock")

        async def listed() -> bool:
            try:
                consoles = await list_consoles(ep)
            except (ConsoleClientError, OSError):
                return False
            names = {str(c.get("display")) for c in consoles} | {
                str(c.get("uuid")) for c in consoles
            }
            return set(self.vms) - set(self.tethered) <= names

        await wait_until(listed, READY_TIMEOUT, what=f"the appliance lists {self.vms}")

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for proc in self.agents:
                await stop(proc, signal.SIGTERM)
            await self.serial.aclose()


def notify(path: Path, fields: dict[str, str]) -> None:
    msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(msg, str(path))


async def serve(d: Path, esx_port: int, notify_path: Path) -> None:
    hosts = Hosts(d, esx_port)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(READY_TIMEOUT):
                await hosts.esx_a(nursery)
                await hosts.mesh(nursery)
                await hosts.esx_c(nursery)
                await hosts.consoles_listed()
            metrics = ",".join(f"{h}={p}" for h, p in sorted(hosts.metrics.items()))
            vms = " ".join(v for v in VM_PATHS if v in hosts.vms)
            fields = {"READY": "1", "LAB": "hosts", "VMS": vms, "METRICS": metrics}
            notify(notify_path, fields | {"TETHERED": " ".join(hosts.tethered)})
            log.warning("lab hosts up: %s", " ".join(hosts.vms))
            sig = await stop_signal()
            log.warning("lab hosts: %s, stopping", sig.name)
            nursery.cancel_scope.cancel()
    finally:
        await hosts.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vic.lab.lab_hosts")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--esx-port", type=int, required=True)
    parser.add_argument("--notify", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    trio.run(serve, args.dir, args.esx_port, args.notify)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
