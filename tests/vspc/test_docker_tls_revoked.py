"""The Docker endpoint with certificates from `vic certs`: the docker client with an
operator certificate gets in until that certificate is revoked; the CRL is picked
up by the running vSPC (its reload re-reads the files), another operator carries on."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.io import certs, revocation, tlsrefresh
from common.io.tlsconfig import ServerTls
from tests.vspc.docker_rig import DOCKER, docker_rig, needs_docker
from vspc.docker_config import DockerTcpConfig

pytestmark = [pytest.mark.trio, needs_docker]


async def test_revoked_operator_is_refused_by_the_docker_endpoint(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    certs.init_ca(ca_dir, key_type="p256")  # P-256 throughout, as Go clients expect
    server = certs.issue(ca_dir, "appliance", "vch", key_type="p256", dns_names=("localhost",))
    alice = certs.issue(ca_dir, "operator", "alice", key_type="p256")
    bob = certs.issue(ca_dir, "operator", "bob", key_type="p256")
    ca = ca_dir / certs.CA_CERT
    tls = ServerTls(server.cert_path, server.key_path, ca)
    tcp = DockerTcpConfig(host="127.0.0.1", port=0, tls=tls)
    async with docker_rig(tmp_path, tcp=tcp) as rig:
        await rig.vm("web", ["sleep", "100000"])
        assert rig.service.docker is not None and DOCKER is not None
        _host, port = rig.service.docker.tcp_addresses[0]
        where = ["-H", f"tcp://localhost:{port}", "--tlsverify", "--tlscacert", str(ca)]

        def who(c: certs.Issued) -> list[str]:
            return ["--tlscert", str(c.cert_path), "--tlskey", str(c.key_path)]

        ok = await rig.docker(*where, *who(alice), "ps", "--format", "{{.Names}}")
        assert (ok.code, ok.out) == (0, b"web\n"), ok
        revocation.revoke(ca_dir, certs.load_cert(alice.cert_path).serial_number)
        tlsrefresh.refresh()  # what the vSPC's reload (SIGHUP or file watcher) runs
        refused = await rig.docker(*where, *who(alice), "ps")
        assert refused.code != 0, refused
        still = await rig.docker(*where, *who(bob), "ps", "--format", "{{.Names}}")
        assert (still.code, still.out) == (0, b"web\n"), still
