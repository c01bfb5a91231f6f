"""A hijacked docker client on TCP (with TLS) that vanishes while its exec is quiet.

The client runs in a network namespace of its own, joined to the test's by a veth
pair; the endpoint listens on the host end (mutual TLS). Once the exec runs (a
process that writes nothing), the wire is cut: no FIN, no RST, nothing more. The
endpoint's TCP keepalive (``[docker] keepalive = 1``: probes after 1 s, every 1 s,
3 unanswered) times the connection out; the hang-up watch sees it shut both ways
and ends the exec, with nothing written to notice it by. Needs root and
``ip netns`` (skipped with the reason otherwise).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

from common.io.tlsconfig import ServerTls
from tests.vspc.docker_rig import DOCKER, STEP, Fifo, docker_rig, needs_docker
from vspc.docker_config import DockerTcpConfig

pytestmark = [pytest.mark.trio, pytest.mark.netns, needs_docker]

HOST_IP, NS_IP = "10.78.0.1", "10.78.0.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def client_ns() -> Iterator[tuple[str, str]]:
    """(namespace, host end of its veth)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for network namespaces")
    tag = f"{os.getpid() % 100000}"
    ns, host_end, ns_end = f"vicK{tag}", f"vkh{tag}", f"vkn{tag}"
    try:
        _ip("netns", "add", ns)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot create network namespaces here: {e.stderr.decode().strip()}")
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _ip("link", "set", ns_end, "netns", ns)
        _ip("addr", "add", f"{HOST_IP}/24", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("-n", ns, "addr", "add", f"{NS_IP}/24", "dev", ns_end)
        _ip("-n", ns, "link", "set", ns_end, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host_end
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _certs(tmp: Path) -> ServerTls:
    ca = trustme.CA()
    server, client = ca.issue_cert(HOST_IP), ca.issue_cert("operator")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    client.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    client.private_key_pem.write_to_path(str(tmp / "key.pem"))
    return ServerTls(tmp / "server.pem", tmp / "server.pem", tmp / "ca.pem")


async def test_vanished_tls_client_ends_its_quiet_exec(
    tmp_path: Path, client_ns: tuple[str, str]
) -> None:
    ns, host_end = client_ns
    tcp = DockerTcpConfig(host=HOST_IP, port=0, tls=_certs(tmp_path))
    async with docker_rig(tmp_path, tcp=tcp, keepalive=1.0) as rig:
        await rig.vm("web", ["sleep", "100000"])
        docker = rig.service.docker
        assert docker is not None and DOCKER is not None
        port = docker.tcp_addresses[0][1]
        tls = ["--tlsverify", "--tlscacert", str(tmp_path / "ca.pem")]
        tls += ["--tlscert", str(tmp_path / "cert.pem"), "--tlskey", str(tmp_path / "key.pem")]
        fifo = Fifo(tmp_path / "started")
        quiet = f"echo started > {fifo.path}; exec sleep 100000"
        argv = ["ip", "netns", "exec", ns, DOCKER, "-H", f"tcp://{HOST_IP}:{port}", *tls]
        proc = await trio.lowlevel.open_process(
            [*argv, "exec", "web", "sh", "-c", quiet],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=rig.env(),
        )
        reg = rig.service.metrics.registry
        try:
            with trio.fail_after(STEP):
                await fifo.until(b"started\n")  # the exec runs in the VM, writing nothing
                assert docker.clients >= 1
                _ip("link", "set", host_end, "down")  # the wire is cut: no FIN, no RST
                while docker.clients:  # the keepalive times out every connection
                    await docker.clients_changed.wait()
            assert proc.returncode is None  # the client did not leave: it vanished
            outcome = {"outcome": "cancelled"}
            assert reg.get_sample_value("vspc_session_execs_finished_total", outcome) == 1.0
        finally:
            proc.kill()
            await proc.wait()
            await fifo.aclose()
