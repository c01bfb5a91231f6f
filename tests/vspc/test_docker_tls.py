"""The Docker endpoint on TCP with TLS and client certificates (docker --tlsverify)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from common.io.tlsconfig import ServerTls
from tests.vspc.docker_rig import DOCKER, docker_rig, needs_docker
from vspc.docker_config import DockerTcpConfig

pytestmark = [pytest.mark.trio, needs_docker]


async def test_tlsverify_with_client_certificates(tmp_path: Path) -> None:
    ca = trustme.CA()
    server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("operator")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    tls = ServerTls(tmp_path / "server.pem", tmp_path / "server.pem", tmp_path / "ca.pem")
    tcp = DockerTcpConfig(host="127.0.0.1", port=0, tls=tls)
    async with docker_rig(tmp_path, tcp=tcp) as rig:
        await rig.vm("web", ["sleep", "100000"])
        assert rig.service.docker is not None and DOCKER is not None
        host, port = rig.service.docker.tcp_addresses[0]
        where = [
            "-H",
            f"tcp://{host}:{port}",
            "--tlsverify",
            "--tlscacert",
            str(tmp_path / "ca.pem"),
        ]
        mine = ["--tlscert", str(tmp_path / "cert.pem"), "--tlskey", str(tmp_path / "key.pem")]
        ok = await rig.docker(*where, *mine, "ps", "--format", "{{.Names}}")
        assert (ok.code, ok.out) == (0, b"web\n"), ok
        anonymous = await rig.docker(*where, "ps")  # no client certificate: refused
        assert anonymous.code != 0, anonymous
        after = await rig.docker(*where, *mine, "inspect", "-f", "{{.State.Status}}", "web")
        assert after.out == b"running\n", after
