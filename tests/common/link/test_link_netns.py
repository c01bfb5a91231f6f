"""Two hosts in network namespaces joined by a veth pair; the wire goes down mid-transfer.

Needs root and ``ip netns`` (skipped with the reason otherwise). The ingress node
streams through an mTLS peer link to the other namespace; the test takes the
veth down until the ingress declares the silent link dead, brings it back, and
the stream resumes: the echo equals what was sent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.io import certs

pytestmark = pytest.mark.netns


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for network namespaces")
    tag = f"{os.getpid() % 100000}"
    a, b = f"vicA{tag}", f"vicB{tag}"
    try:
        _ip("netns", "add", a)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot create network namespaces here: {e.stderr.decode().strip()}")
    try:
        _ip("netns", "add", b)
        _ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        _ip("link", "set", f"va{tag}", "netns", a)
        _ip("link", "set", f"vb{tag}", "netns", b)
        for ns, dev, addr in ((a, f"va{tag}", "10.77.0.1/24"), (b, f"vb{tag}", "10.77.0.2/24")):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _node(ns: str, certs_dir: Path, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
    """Run ``python -m tests.common.link.link_node ARGS`` inside network namespace ``ns``."""
    root = Path(__file__).resolve().parents[3]
    node = [sys.executable, "-m", "tests.common.link.link_node"]
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, *node, *args, "--certs", str(certs_dir)],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def _serve(b: str, certs_dir: Path) -> subprocess.Popen[str]:
    return _node(b, certs_dir, "serve", "--listen", "10.77.0.2:7443", "--name", "B", "--allow", "A")


def _send(a: str, certs_dir: Path) -> subprocess.Popen[str]:
    args = ["--address", "tcp:10.77.0.2:7443", "--name", "A", "--peer", "B", "--mb", "16"]
    return _node(a, certs_dir, "send", *args, stdin=True)


def _cut_wire_then_resume(client: subprocess.Popen[str], a: str, tag: str) -> dict[str, Any]:
    """Take the wire down at half the transfer until the link is declared dead,
    bring it back, let the transfer finish; the client's final JSON line."""
    assert client.stdout is not None and client.stdin is not None
    assert client.stdout.readline().strip() == "half"
    _ip("-n", a, "link", "set", f"va{tag}", "down")  # the wire is gone
    assert client.stdout.readline().strip() == "link-dead"  # keepalive noticed
    _ip("-n", a, "link", "set", f"va{tag}", "up")
    client.stdin.write("go\n")
    client.stdin.flush()
    lines = [ln for ln in client.stdout.read().splitlines() if ln.startswith("{")]
    assert client.wait(timeout=60) == 0, client.stderr.read() if client.stderr else ""
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def test_link_between_namespaces_survives_wire_down(
    two_hosts: tuple[str, str], tmp_path: Path
) -> None:
    a, b = two_hosts
    tag = a[4:]
    certs.init_ca(tmp_path)
    certs.issue(tmp_path, "host", "A")
    certs.issue(tmp_path, "host", "B")
    server = _serve(b, tmp_path)
    client = None
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        client = _send(a, tmp_path)
        result = _cut_wire_then_resume(client, a, tag)
        assert result["bytes"] == 16 << 20
        assert result["back"] == result["sent"]
        assert result["links"] >= 2
    finally:
        for p in (client, server):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
