"""Lab scenario 3's VM in a network namespace of its own, given its address by dnsmasq.

Two namespaces joined by a veth pair: dnsmasq on one side, the VM (its agent)
on the other, where busybox udhcpc takes the lease.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from common.proto import guestinfo as gi
from vic.lab.agent_plans import VMPlan
from vic.lab.agent_processes import STEP_TIMEOUT, stop
from vic.lab.agent_report import AgentCheck, fmt_addresses
from vspc.guestinfo_watch import FileStoreWatcher, wait_for_addresses

SUBNET = "10.213.91"
DHCP_LO, DHCP_HI = 50, 99


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


async def lease_and_publish(
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
