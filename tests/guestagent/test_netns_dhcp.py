"""Assigned addresses, learned from the kernel and republished on change: a real DHCP
server (dnsmasq) and client (busybox udhcpc) on a veth pair between two network
namespaces this test creates; the agent is a real ``vic agent`` process inside the
client namespace, publishing into a file-backed store the test watches."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from vspc.guestinfo_watch import FileStoreWatcher, wait_for_addresses

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
SUBNET = "10.213.77"


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def _netns_possible() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "dnsmasq", "busybox"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    probe = f"h8probe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as e:
        return f"cannot create a network namespace: {e}"
    _ip("netns", "del", probe)
    return None


@pytest.fixture
def netns_pair(tmp_path: Path) -> Iterator[tuple[str, str, str, str]]:
    why = _netns_possible()
    if why:
        pytest.skip(why)
    tag = f"{os.getpid() % 100000}"
    srv, cli = f"h8s{tag}", f"h8c{tag}"
    vs, vc = f"h8vs{tag}", f"h8vc{tag}"
    _ip("netns", "add", srv)
    _ip("netns", "add", cli)
    try:
        _ip("link", "add", vs, "netns", srv, "type", "veth", "peer", "name", vc, "netns", cli)
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", vs, ns=srv)
        _ip("link", "set", vs, "up", ns=srv)
        _ip("link", "set", vc, "up", ns=cli)
        _ip("link", "set", "lo", "up", ns=cli)
        yield srv, cli, vs, vc
    finally:
        for ns in (srv, cli):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _dnsmasq(tmp: Path, ns: str, dev: str, lo: int, hi: int, tag: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "ip", "netns", "exec", ns, "dnsmasq", "--no-daemon", "--port=0",
            "--bind-interfaces", f"--interface={dev}", "--conf-file=/dev/null",
            f"--dhcp-range={SUBNET}.{lo},{SUBNET}.{hi},255.255.255.0,2m",
            f"--dhcp-leasefile={tmp / f'leases-{tag}'}", "--dhcp-authoritative",
            f"--pid-file={tmp / f'dnsmasq-{tag}.pid'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _udhcpc(tmp: Path, ns: str, dev: str) -> None:
    script = tmp / "udhcpc.sh"
    if not script.exists():
        script.write_text(
            "#!/bin/sh\n"
            'case "$1" in\n'
            '  deconfig) ip -4 addr flush dev "$interface" ;;\n'
            '  bound|renew) ip -4 addr flush dev "$interface";'
            ' ip addr add "$ip/${mask:-24}" dev "$interface" ;;\n'
            "esac\n"
        )
        script.chmod(0o755)
    subprocess.run(
        ["ip", "netns", "exec", ns, "busybox", "udhcpc", "-i", dev, "-f", "-q", "-n",
         "-t", "10", "-T", "1", "-s", str(script)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def _start_agent(ns: str, conf: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            "vic.cli",
            "agent",
            "--config",
            str(conf),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(conf.with_suffix(".log"), "wb"),
    )


def _in(prefix_lo: int, prefix_hi: int):  # type: ignore[no-untyped-def]
    def check(nets: dict[str, list[ipaddress.IPv4Address | ipaddress.IPv6Address]]) -> bool:
        v4 = [a for a in nets.get("public", []) if a.version == 4]
        return len(v4) == 1 and prefix_lo <= int(str(v4[0]).rsplit(".", 1)[1]) <= prefix_hi

    return check


async def test_dhcp_address_published_and_republished(
    tmp_path: Path, netns_pair: tuple[str, str, str, str]
) -> None:
    srv, cli, vs, vc = netns_pair
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f"""
[guestinfo]
backend = "file"
path = "{tmp_path / "vm1.json"}"
[console]
transport = "none"
[network]
publish = true
names = {{ {vc} = "public" }}
[agent]
subreaper = false
"""
    )
    agent = _start_agent(cli, conf)
    d1 = _dnsmasq(tmp_path, srv, vs, 10, 20, "a")
    d2 = None
    w = FileStoreWatcher(tmp_path)
    try:
        with trio.fail_after(90):
            await trio.to_thread.run_sync(_udhcpc, tmp_path, cli, vc)
            nets = await wait_for_addresses(w, "vm1", _in(10, 20), 60)
            first = nets["public"][0]
            # IPv6 too
            _ip("addr", "add", "fd13:77::5/64", "dev", vc, "nodad", ns=cli)
            nets = await wait_for_addresses(
                w, "vm1", lambda n: ipaddress.ip_address("fd13:77::5") in n.get("public", []), 30
            )
            assert first in nets["public"]
            # a new server hands out another range: a new lease replaces the address
            d1.terminate()
            d1.wait(10)
            d2 = _dnsmasq(tmp_path, srv, vs, 50, 60, "b")
            await trio.to_thread.run_sync(_udhcpc, tmp_path, cli, vc)
            nets = await wait_for_addresses(w, "vm1", _in(50, 60), 60)
            assert first not in nets["public"]
            # address removed: the publication follows
            _ip("-4", "addr", "flush", "dev", vc, ns=cli)
            nets = await wait_for_addresses(
                w, "vm1", lambda n: [a for a in n.get("public", []) if a.version == 4] == [], 30
            )
            assert nets["public"] == [ipaddress.ip_address("fd13:77::5")]
            _ip("-6", "addr", "flush", "dev", vc, "scope", "global", ns=cli)
            await wait_for_addresses(w, "vm1", lambda n: "public" not in n, 30)
        assert agent.poll() is None  # still running
    finally:
        for p in (agent, d1, d2):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
