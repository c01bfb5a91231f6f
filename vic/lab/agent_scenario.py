"""Lab scenario 3: VMs running the real guest agent.

Every VM is a ``vic agent`` process of its own. Its guestinfo is a file-backed
store (``<workdir>/ag/guestinfo/<vm>.json``: the VM's extraConfig as the
appliance's watcher reads it); its console goes through relay esx-c into the
appliance endpoint, either over hybrid vsock (the agent connects to the relay's
``<uds>_<port>`` listener) or over a serial line (a pty pair made by socat, the
null-modem cable: the agent drives one end with pyserial, the relay reads the
other). With root, one more VM runs in a network namespace of its own and gets
its address from dnsmasq over a veth pair.

The appliance side, for each VM: writes the session config into guestinfo
(``runblock``: nothing runs before the go-ahead), attaches to the console
through the attach socket, gives the go-ahead, waits for ``started`` (``true``
or the launch error the user sees), types into the console where the session
reads its stdin, asks the guest through guestinfo to signal the tty session
(which waits for that), waits for the exit ``status``, then powers the VM off at once
(SIGKILL of the agent, powerState poweredOff). Output the guest had not flushed
to its channel before publishing the status dies with it; a complete console
afterwards shows the order held. (How much had reached the console when the
status was seen is printed too, but is no verdict: bytes the guest has sent may
still be in the relay or in kernel buffers on the appliance's side.) vm-agent-1
ends with 4 MiB of output, so its agent has real flushing to do at the exit.

The parts: :mod:`vic.lab.agent_plans` (what each VM runs), :mod:`vic.lab.agent_processes`
(the agents, socat), :mod:`vic.lab.agent_dhcp` (the netns VM), :mod:`vic.lab.agent_report`
(the checks and their table). This module is the appliance's side and the run.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from common.io.guestinfo.filestore import POWERED_OFF
from common.ops.excgroups import unwrap_single
from common.proto.console import protocol as proto
from relay.config import HvsockListener, SerialListener
from relay.daemon import RelayDaemon
from vic.lab.agent_dhcp import DhcpNet, lease_and_publish, netns_unavailable
from vic.lab.agent_plans import VMPlan, netns_plan, plans
from vic.lab.agent_processes import (
    HVSOCK_PORT,
    STEP_TIMEOUT,
    agent_toml,
    log_tail,
    null_modem,
    start_agent,
    stop,
)
from vic.lab.agent_report import AgentCheck, fmt_addresses, render
from vic.lab.relay_scenario import relay_config
from vspc.console import client as cc
from vspc.core.identity import PortKey
from vspc.endpoint import Endpoint
from vspc.guestinfo_watch import (
    FileStoreWatcher,
    SessionStartFailed,
    configure_session,
    go_ahead,
    send_signal,
    wait_for_addresses,
    wait_for_exit,
    wait_for_started,
)
from vspc.service import VspcService

__all__ = ["AgentCheck", "render", "run"]


class ConsoleReader:
    """The appliance attached to one console (read-write), keeping every byte."""

    def __init__(self, check: AgentCheck) -> None:
        self.check = check
        self.stream: trio.abc.Stream | None = None
        self.changed = trio.Event()

    async def attach(
        self, service: VspcService, key: PortKey, proc: trio.Process, nursery: trio.Nursery
    ) -> None:
        with trio.fail_after(STEP_TIMEOUT):
            while service.consoles.get(key) is None:
                if proc.poll() is not None:
                    raise RuntimeError(f"agent exited with {proc.returncode} before connecting")
                await trio.sleep(0.02)
        ep = cc.Endpoint(socket=service.config.console.socket)
        self.stream, _st, rest = await cc.attach(
            ep,
            proto.AttachRequest(
                vm=key.uuid, label=key.label, mode="rw", replay=1 << 20, notices=False
            ),
        )
        self._got(rest)
        nursery.start_soon(self._read)

    def _got(self, data: bytes | bytearray) -> None:
        if data:
            self.check.console += data
            self.changed.set()
            self.changed = trio.Event()

    async def _read(self) -> None:
        assert self.stream is not None
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not data:
                return
            self._got(data)

    async def wait_for(self, cond: Callable[[bytearray], bool], timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while not cond(self.check.console):
                await self.changed.wait()
            return True
        return False

    async def aclose(self) -> None:
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)


async def run_vm(
    service: VspcService,
    watcher: FileStoreWatcher,
    d: Path,
    plan: VMPlan,
    check: AgentCheck,
    serial: tuple[Path, PortKey] | None,
    prepare: Callable[[], Awaitable[None]] | None = None,
) -> None:
    label = "ttyS0" if plan.channel == "serial" else "vsock"
    key = serial[1] if plan.channel == "serial" and serial else PortKey(plan.vm, label)
    conf = agent_toml(d, plan, serial[0] if serial else None)
    sid = plan.session.id
    reader = ConsoleReader(check)
    proc: trio.Process | None = None
    stage = "writing the session config"
    try:
        async with trio.open_nursery() as n:
            await configure_session(watcher, plan.vm, plan.session)
            stage = "starting the agent, waiting for its console"
            proc = await start_agent(conf, plan.netns)
            await reader.attach(service, key, proc, n)
            if plan.netns:
                assert prepare is not None
                stage = "DHCP in the VM's namespace, waiting for the published address"
                await lease_and_publish(watcher, plan, check, prepare)
            await go_ahead(watcher, plan.vm, sid)
            stage = "waiting for `started`"
            try:
                await wait_for_started(watcher, plan.vm, sid, STEP_TIMEOUT)
                check.state = "started"
            except SessionStartFailed as e:
                check.state = str(e)
            if not plan.netns:
                stage = "reading the published addresses"
                await _addresses(watcher, plan, check)
            stage = "waiting for the exit status"
            if plan.error:
                await _launch_failed(plan, check, proc)
            elif check.state != "started":
                check.problems.append("launch failed")
            else:
                await _ran(watcher, plan, check, reader)
            stage = "powering off"
            await _power_off(watcher, plan, check, proc, reader)
            n.cancel_scope.cancel()
    except Exception as e:  # one VM's failure is reported in its row; the others go on
        check.problems.append(f"{stage}: {_describe(e)}")
        check.events.extend(f"agent log: {ln}" for ln in log_tail(conf))
    finally:
        await stop(proc)
        await reader.aclose()
    with contextlib.suppress(OSError, trio.TooSlowError):
        errors = (await watcher.state(plan.vm)).errors()
        check.events.extend(f"guest reported error [{k}]: {v}" for k, v in errors.items())


def _describe(e: BaseException) -> str:
    e = unwrap_single(e)
    text = str(e)
    if isinstance(e, subprocess.CalledProcessError) and e.stderr:
        text += ": " + e.stderr.decode(errors="replace").strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


async def _launch_failed(plan: VMPlan, check: AgentCheck, proc: trio.Process) -> None:
    if plan.error not in check.state:
        check.problems.append(f"started = {check.state!r}, want the launch error")
    await trio.sleep(0.2)  # the agent must outlive a failed launch to report it
    if proc.poll() is not None:
        check.problems.append(f"agent exited ({proc.returncode}) after the launch failure")
    else:
        check.events.append("launch error published in `started`; the agent stayed up")


async def _ran(
    watcher: FileStoreWatcher, plan: VMPlan, check: AgentCheck, reader: ConsoleReader
) -> None:
    if plan.prompt and not await reader.wait_for(lambda b: plan.prompt in b, STEP_TIMEOUT):
        check.problems.append(f"no {plan.prompt!r} on the console")
        return
    if plan.typed:
        assert reader.stream is not None
        await reader.stream.send_all(plan.typed)
        check.events.append(
            f"typed {plan.typed!r} into the console; the process read it from its stdin"
        )
    if plan.send:
        seq = await send_signal(watcher, plan.vm, plan.session.id, plan.send, STEP_TIMEOUT)
        check.events.append(
            f"asked for {plan.send} through guestinfo (request {seq}); the guest acked it"
        )
    info = await wait_for_exit(watcher, plan.vm, plan.session.id, STEP_TIMEOUT)
    check.at_status = len(check.console)
    check.status = str(info.status) + (f" ({info.signal})" if info.signal else "")
    if info.status != plan.status or (info.signal or None) != plan.signal:
        check.problems.append(f"status {check.status}, want {plan.status} {plan.signal or ''}")
    if info.stoptime is None:
        check.problems.append("no detail.stoptime with the status")


async def _addresses(watcher: FileStoreWatcher, plan: VMPlan, check: AgentCheck) -> None:
    with contextlib.suppress(trio.TooSlowError):
        # the agent publishes at start-up; a machine with nothing but lo publishes nothing
        await wait_for_addresses(watcher, plan.vm, bool, 3)
    check.address = fmt_addresses((await watcher.state(plan.vm)).networks())


async def _power_off(
    watcher: FileStoreWatcher,
    plan: VMPlan,
    check: AgentCheck,
    proc: trio.Process,
    reader: ConsoleReader,
) -> None:
    await stop(proc)  # SIGKILL at once: nothing unflushed survives this
    await watcher.set_power(plan.vm, POWERED_OFF)
    n = len(plan.expected)
    await reader.wait_for(lambda b: len(b) >= n, 10)
    if check.at_status is not None:
        check.events.append(
            f"status seen with {check.at_status}/{n} console bytes at the appliance; agent "
            f"killed at once (power-off); {len(check.console)}/{n} bytes arrived in the end"
        )


# --------------------------------------------------------------------------- scenario


async def run(
    service: VspcService,
    endpoint: Endpoint,
    workdir: Path,
    *,
    seed: int,
    lines: int,
    netns: bool = True,
) -> list[AgentCheck]:
    rng = random.Random(seed * 1000 + 3)
    sock = endpoint.config.unix
    assert sock is not None
    d = workdir / "ag"
    (d / "guestinfo").mkdir(parents=True, exist_ok=True)
    watcher = FileStoreWatcher(d / "guestinfo")
    todo = plans(rng, lines)
    net, skipped = await _netns_vm(d, rng, netns, todo)
    checks: list[AgentCheck] = []
    serial = SerialLine()
    try:
        await serial.open(d)
        listeners = relay_listeners(d, todo, serial.pair)
        async with trio.open_nursery() as nursery:
            await nursery.start(RelayDaemon(relay_config("esx-c", sock, listeners)).run)
            await _run_vms(service, watcher, d, todo, checks, serial.pair, net)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await serial.aclose()
            if net is not None:
                await net.teardown()
    return checks + skipped


async def _netns_vm(
    d: Path, rng: random.Random, netns: bool, todo: list[VMPlan]
) -> tuple[DhcpNet | None, list[AgentCheck]]:
    """With root, one more VM in a namespace of its own (added to ``todo``); or why not."""
    net: DhcpNet | None = None
    why = netns_unavailable() if netns else "turned off (--no-netns)"
    if not why:
        net = DhcpNet(d)
        try:
            await net.setup()
            todo.append(netns_plan(rng, net.vm, net.vm_if))
        except (subprocess.CalledProcessError, OSError) as e:
            err = getattr(e, "stderr", b"") or b""
            why = f"network namespace set-up failed: {err.decode(errors='replace').strip() or e}"
            await net.teardown()
            net = None
    if why:
        return net, [AgentCheck("vm-agent-dhcp", "hybrid vsock, own netns + DHCP", skipped=why)]
    return net, []


class SerialLine:
    """The serial VM's line: socat's pty pair (if socat is installed)."""

    def __init__(self) -> None:
        self.socat: trio.Process | None = None
        self.hold_fd = -1
        self.pair: tuple[Path, Path] | None = None  # (guest end, host end)

    async def open(self, d: Path) -> None:
        if shutil.which("socat"):
            self.socat, guest_end, host_end = await null_modem(d)
            # the VM's UART stays when its agent dies: keep the guest end open, so socat
            # and the relay's device stay up (a power-off is not a cable pulled)
            self.hold_fd = os.open(guest_end, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            self.pair = (guest_end, host_end)

    async def aclose(self) -> None:
        if self.hold_fd >= 0:
            os.close(self.hold_fd)
        await stop(self.socat, signal.SIGTERM)


def relay_listeners(
    d: Path, todo: list[VMPlan], serial_pair: tuple[Path, Path] | None
) -> dict[str, tuple[object, ...]]:
    """Relay esx-c: a hybrid vsock listener per hybrid VM, the serial line's host end."""
    hv = tuple(
        HvsockListener(
            name=p.vm,
            vm=p.vm,
            uds_path=Path(f"{d / p.vm}.vsock"),
            port=HVSOCK_PORT,
            label="vsock",
        )
        for p in todo
        if p.channel == "hybrid"
    )
    listeners: dict[str, tuple[object, ...]] = {"hvsock": hv}
    if serial_pair:
        listeners["serial"] = (
            SerialListener(name="ttyS0", vm="vm-agent-2", device=serial_pair[1], label="ttyS0"),
        )
    return listeners


async def _run_vms(
    service: VspcService,
    watcher: FileStoreWatcher,
    d: Path,
    todo: list[VMPlan],
    checks: list[AgentCheck],
    serial_pair: tuple[Path, Path] | None,
    net: DhcpNet | None,
) -> None:
    """Every planned VM at once, each with its check (a serial VM without socat: skipped)."""
    async with trio.open_nursery() as vms:
        for p in todo:
            what = {"hybrid": "hybrid vsock", "serial": "serial (pty pair)"}[p.channel]
            if p.netns:
                what += ", own netns + DHCP"
            check = AgentCheck(p.vm, what, expected=p.expected)
            checks.append(check)
            if p.channel == "serial" and serial_pair is None:
                check.skipped = "socat not installed (it makes the pty pair)"
                continue
            ser = (serial_pair[0], PortKey(p.vm, "ttyS0")) if serial_pair else None
            vms.start_soon(
                run_vm,
                service,
                watcher,
                d,
                p,
                check,
                ser,
                net.lease if (net and p.netns) else None,
            )
