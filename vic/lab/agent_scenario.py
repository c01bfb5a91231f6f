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
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from common.io.guestinfo.filestore import POWERED_OFF
from common.ops.excgroups import unwrap_single
from common.proto import guestinfo as gi
from common.proto.console import protocol as proto
from relay.config import HvsockListener, SerialListener
from relay.daemon import RelayDaemon
from vic.lab.relay_scenario import relay_config
from vic.lab.report import ConsoleCheck
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

ROOT = Path(__file__).resolve().parents[2]
HVSOCK_PORT = 1024
MISSING = "/opt/vic-lab/no-such-command"
SUBNET = "10.213.91"
DHCP_LO, DHCP_HI = 50, 99
STEP_TIMEOUT = 40.0  # per wait (agent start-up, started, status) on a loaded machine


@dataclass
class AgentCheck:
    """What the appliance saw of one agent VM, and whether it was what it asked for."""

    vm: str
    channel: str
    expected: bytes = b""
    console: bytearray = field(default_factory=bytearray)
    address: str = "-"
    state: str = "-"
    status: str = "-"
    at_status: int | None = None
    problems: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.problems and bytes(self.console) == self.expected

    def console_verdict(self) -> str:
        c = ConsoleCheck(
            self.vm, self.channel, sent=bytearray(self.expected), received=bytearray(self.console)
        )
        return "" if c.ok else c.verdict()

    def verdict(self) -> str:
        if self.skipped:
            return f"SKIPPED: {self.skipped}"
        why = list(self.problems)
        if cv := self.console_verdict():
            why.append(f"console {cv}")
        return "OK" if not why else "FAILED: " + "; ".join(why)


@dataclass
class VMPlan:
    vm: str
    channel: str  # "hybrid" | "serial"
    session: gi.SessionConfig
    expected: bytes = b""
    status: int | None = None
    signal: str | None = None
    error: str = ""  # expected in `started` (a launch failure)
    typed: bytes = b""  # typed into the console once `prompt` is on it
    prompt: bytes = b""
    send: str = ""  # then ask the guest, through guestinfo, to deliver this signal
    netns: str = ""  # run the agent in this network namespace
    iface: str = ""


# --------------------------------------------------------------------------- sessions


def _loop(vm: str, n: int) -> tuple[str, bytes]:
    script = (
        f'i=1; while [ $i -le {n} ]; do echo "$VM line $i of {n}: '
        f'$((i * 7919 % 10007))"; i=$((i + 1)); done'
    )
    out = b"".join(f"{vm} line {i} of {n}: {i * 7919 % 10007}\n".encode() for i in range(1, n + 1))
    return script, out


BINARY_SH = r"printf 'binary: \000\377\033[0m\n'"
BINARY_OUT = b"binary: \x00\xff\x1b[0m\n"


def plans(rng: random.Random, lines: int) -> list[VMPlan]:
    def sid() -> str:
        return f"{rng.getrandbits(48):012x}"

    out: list[VMPlan] = []
    vm = "vm-agent-1"
    loop, loop_out = _loop(vm, lines)
    typed = b"greetings from the appliance"
    # 4 MiB right before the exit, more than the kernel buffers on the way hold: an agent
    # that published the status before flushing its console would still hold part of it
    # when the VM powers off at the status (tried: such an agent loses 2-3 MiB here)
    bulk_n = 4 << 20
    bulk = (f"{vm} bulk output\n".encode() * (bulk_n // 10 + 1))[:bulk_n]
    script = (
        f'echo "hello from $VM"; read -r line; echo "typed: $line"; {BINARY_SH}; '
        f'{loop}; yes "$VM bulk output" | head -c {bulk_n}; exit 3'
    )
    out.append(
        VMPlan(
            vm,
            "hybrid",
            gi.SessionConfig(
                id=sid(),
                path="/bin/sh",
                args=("sh", "-c", script),
                env=(f"VM={vm}",),
                openstdin=True,
                runblock=True,
            ),
            expected=f"hello from {vm}\n".encode()
            + b"typed: "
            + typed
            + b"\n"
            + BINARY_OUT
            + loop_out
            + bulk,
            status=3,
            typed=typed + b"\n",
            prompt=f"hello from {vm}\n".encode(),
        )
    )
    vm = "vm-agent-2"
    loop, loop_out = _loop(vm, lines)
    script = (
        f'if [ -t 0 ] && [ -t 1 ]; then echo "stdin and stdout are a tty"; fi; '
        f'{BINARY_SH}; {loop}; echo "waiting for a signal"; exec sleep 120'
    )
    text = b"stdin and stdout are a tty\n" + BINARY_OUT + loop_out + b"waiting for a signal\n"
    out.append(
        VMPlan(
            vm,
            "serial",
            gi.SessionConfig(
                id=sid(),
                path="/bin/sh",
                args=("sh", "-c", script),
                env=(f"VM={vm}",),
                tty=True,
                runblock=True,
            ),
            expected=text.replace(b"\n", b"\r\n"),  # the pty's line discipline (onlcr)
            status=128 + signal.SIGTERM,
            signal="SIGTERM",
            send="SIGTERM",
            prompt=b"waiting for a signal\r\n",
        )
    )
    vm = "vm-agent-3"
    out.append(
        VMPlan(
            vm,
            "hybrid",
            gi.SessionConfig(
                id=sid(), path=MISSING, args=("no-such-command", "--version"), runblock=True
            ),
            error=f"cannot run {MISSING}: No such file or directory",
        )
    )
    return out


def netns_plan(rng: random.Random, ns: str, iface: str) -> VMPlan:
    vm = "vm-agent-dhcp"
    script = f'set -- $(ip -4 -o addr show dev {iface}); echo "my address: $4"; exit 0'
    return VMPlan(
        vm,
        "hybrid",
        gi.SessionConfig(
            id=f"{rng.getrandbits(48):012x}",
            path="/bin/sh",
            args=("sh", "-c", script),
            runblock=True,
        ),
        status=0,
        netns=ns,
        iface=iface,  # expected: filled in from the published address
    )


# --------------------------------------------------------------------------- processes


def agent_toml(d: Path, plan: VMPlan, serial_dev: Path | None) -> Path:
    if plan.channel == "serial":
        assert serial_dev is not None
        console = f'transport = "serial"\npath = "{serial_dev}"\n'
    else:
        console = f'transport = "hybrid"\npath = "{d / plan.vm}.vsock"\nport = {HVSOCK_PORT}\n'
    names = f'names = {{ {plan.iface} = "public" }}\n' if plan.iface else ""
    conf = d / f"{plan.vm}.toml"
    conf.write_text(
        "[guestinfo]\n"
        'backend = "file"\n'
        f'path = "{d / "guestinfo" / plan.vm}.json"\n'
        "[console]\n" + console + "backoff-max = 0.5\n"
        "[network]\n"
        "publish = true\n" + names + "[agent]\n"
        "subreaper = true\n"
    )
    return conf


async def start_agent(conf: Path, ns: str = "") -> trio.Process:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "vic.cli", "agent", "--config", str(conf)]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]  # exec's: the pid is the agent's
    log = os.open(conf.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return await trio.lowlevel.open_process(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
        )
    finally:
        os.close(log)


async def stop(proc: trio.Process | None, sig: int = signal.SIGKILL) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    with trio.CancelScope(shield=True):
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(5):
                await proc.wait()


def log_tail(conf: Path, n: int = 3) -> list[str]:
    try:
        text = conf.with_suffix(".log").read_text(errors="replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()][-n:]


async def null_modem(d: Path) -> tuple[trio.Process, Path, Path]:
    """A pty pair joined by socat: (process, guest end, host end)."""
    guest, host = d / "vm-agent-2.ttyS0", d / "esx-c.ttyS0"
    proc = await trio.lowlevel.open_process(
        ["socat", f"pty,raw,echo=0,link={guest}", f"pty,raw,echo=0,link={host}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with trio.fail_after(10):
        while not (guest.exists() and host.exists()):
            if proc.returncode is not None or proc.poll() is not None:
                raise OSError(f"socat exited with {proc.returncode}")
            await trio.sleep(0.02)
    return proc, guest, host


# --------------------------------------------------------------------------- appliance side


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


def fmt_addresses(nets: dict[str, list[gi.IPAddress]]) -> str:
    if not nets:
        return "(none published)"
    return "; ".join(
        f"{net} {','.join(str(a) for a in addrs)}" for net, addrs in sorted(nets.items())
    )


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
                await _dhcp(watcher, plan, check, prepare)
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


# --------------------------------------------------------------------------- netns + DHCP


async def _ip(*args: str, ns: str = "") -> None:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    await trio.run_process(cmd, capture_stdout=True, capture_stderr=True)


def netns_unavailable() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "dnsmasq", "busybox"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return ""


class DhcpNet:
    """Two namespaces joined by a veth pair: dnsmasq on one side, the VM on the other."""

    def __init__(self, d: Path) -> None:
        tag = f"{os.getpid() % 100000}"
        self.d = d
        self.srv, self.vm = f"viclab{tag}s", f"viclab{tag}v"
        self.srv_if, self.vm_if = f"vl{tag}s", f"vl{tag}v"
        self.dnsmasq: trio.Process | None = None
        self.made: list[str] = []

    async def setup(self) -> None:
        for ns in (self.srv, self.vm):
            await _ip("netns", "add", ns)
            self.made.append(ns)
        await _ip(
            "link",
            "add",
            self.srv_if,
            "netns",
            self.srv,
            "type",
            "veth",
            "peer",
            "name",
            self.vm_if,
            "netns",
            self.vm,
        )
        await _ip("addr", "add", f"{SUBNET}.1/24", "dev", self.srv_if, ns=self.srv)
        await _ip("link", "set", self.srv_if, "up", ns=self.srv)
        await _ip("link", "set", "lo", "up", ns=self.vm)
        await _ip("link", "set", self.vm_if, "up", ns=self.vm)
        self.dnsmasq = await trio.lowlevel.open_process(
            [
                "ip",
                "netns",
                "exec",
                self.srv,
                "dnsmasq",
                "--no-daemon",
                "--port=0",
                "--bind-interfaces",
                f"--interface={self.srv_if}",
                "--conf-file=/dev/null",
                f"--dhcp-range={SUBNET}.{DHCP_LO},{SUBNET}.{DHCP_HI},255.255.255.0,10m",
                f"--dhcp-leasefile={self.d / 'dnsmasq.leases'}",
                "--dhcp-authoritative",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def lease(self) -> None:
        """busybox udhcpc in the VM's namespace; our script sets the address."""
        script = self.d / "udhcpc.sh"
        script.write_text(
            "#!/bin/sh\n"
            'case "$1" in\n'
            '  deconfig) ip -4 addr flush dev "$interface" ;;\n'
            '  bound|renew) ip -4 addr flush dev "$interface";'
            ' ip addr add "$ip/${mask:-24}" dev "$interface" ;;\n'
            "esac\n"
        )
        script.chmod(0o755)
        await trio.run_process(
            [
                "ip",
                "netns",
                "exec",
                self.vm,
                "busybox",
                "udhcpc",
                "-i",
                self.vm_if,
                "-f",
                "-q",
                "-n",
                "-t",
                "10",
                "-T",
                "1",
                "-s",
                str(script),
            ],
            capture_stdout=True,
            capture_stderr=True,
        )

    async def teardown(self) -> None:
        with trio.CancelScope(shield=True):
            await stop(self.dnsmasq, signal.SIGTERM)
            for ns in self.made:
                with contextlib.suppress(subprocess.CalledProcessError, OSError):
                    await _ip("netns", "del", ns)


def _in_range(nets: dict[str, list[gi.IPAddress]]) -> gi.IPAddress | None:
    lo = ipaddress.ip_address(f"{SUBNET}.{DHCP_LO}")
    hi = ipaddress.ip_address(f"{SUBNET}.{DHCP_HI}")
    for a in nets.get("public", []):
        if a.version == 4 and lo <= a <= hi:  # type: ignore[operator]
            return a
    return None


async def _dhcp(
    watcher: FileStoreWatcher, plan: VMPlan, check: AgentCheck, lease: Callable[[], Awaitable[None]]
) -> None:
    """The VM gets its address from dnsmasq; the agent publishes it; the session, once
    launched, must print the same address."""
    await lease()
    nets = await wait_for_addresses(
        watcher, plan.vm, lambda n: _in_range(n) is not None, STEP_TIMEOUT
    )
    addr = _in_range(nets)
    check.address = fmt_addresses(nets)
    plan.expected = check.expected = f"my address: {addr}/24\n".encode()
    check.events.append(
        f"dnsmasq leased {addr} in netns {plan.netns}; the agent published it; "
        "the session prints what it sees"
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
    net: DhcpNet | None = None
    skipped: list[AgentCheck] = []
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
        skipped.append(AgentCheck("vm-agent-dhcp", "hybrid vsock, own netns + DHCP", skipped=why))

    checks: list[AgentCheck] = []
    socat: trio.Process | None = None
    hold_fd = -1
    try:
        serial_pair: tuple[Path, Path] | None = None
        if shutil.which("socat"):
            socat, guest_end, host_end = await null_modem(d)
            # the VM's UART stays when its agent dies: keep the guest end open, so socat
            # and the relay's device stay up (a power-off is not a cable pulled)
            hold_fd = os.open(guest_end, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            serial_pair = (guest_end, host_end)
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
        async with trio.open_nursery() as nursery:
            await nursery.start(RelayDaemon(relay_config("esx-c", sock, listeners)).run)
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
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if hold_fd >= 0:
                os.close(hold_fd)
            await stop(socat, signal.SIGTERM)
            if net is not None:
                await net.teardown()
    return checks + skipped


def render(title: str, checks: list[AgentCheck]) -> str:
    rows = [
        ("VM", "channel", "address (guestinfo)", "state (started)", "exit", "console", "result")
    ]
    for c in checks:
        cons = f"{len(c.console)}/{len(c.expected)}"
        if c.at_status is not None:
            cons += f" ({c.at_status} when status seen)"
        rows.append(
            (
                c.vm,
                c.channel,
                c.address,
                c.state,
                c.status,
                cons if not c.skipped else "-",
                c.verdict(),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"== {title}"]
    for i, r in enumerate(rows):
        lines.append("  ".join(f"{v:<{w}}" for v, w in zip(r, widths, strict=False)) + "  " + r[-1])
        if i:
            lines.extend(f"    - {e}" for e in checks[i - 1].events)
    return "\n".join(lines)
