"""TCP endpoint with mutual TLS (certificates from trustme)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trustme

from common.proto.console.protocol import AttachRequest
from vspc.console import ConsoleTcpConfig
from vspc.console.client import ConsoleClientError, Endpoint, attach, list_consoles

from .test_console_support import KEY, make_config, read_exactly, short_dir, start

__all__ = ["short_dir"]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    server_ca = trustme.CA()
    client_ca = trustme.CA()
    rogue_ca = trustme.CA()
    files = {
        "server_ca": tmp_path / "server-ca.pem",
        "client_ca": tmp_path / "client-ca.pem",
        "server": tmp_path / "server.pem",
        "client": tmp_path / "client.pem",
        "rogue": tmp_path / "rogue.pem",
    }
    server_ca.cert_pem.write_to_path(str(files["server_ca"]))
    client_ca.cert_pem.write_to_path(str(files["client_ca"]))
    server_ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(files["server"])
    )
    client_ca.issue_cert("operator.example").private_key_and_cert_chain_pem.write_to_path(
        str(files["client"])
    )
    rogue_ca.issue_cert("operator.example").private_key_and_cert_chain_pem.write_to_path(
        str(files["rogue"])
    )
    return files


async def test_mutual_tls_list_and_attach(
    short_dir: Path, pki: dict[str, Path], nursery: trio.Nursery
) -> None:
    tcp = ConsoleTcpConfig(
        cert=pki["server"], key=pki["server"], client_ca=pki["client_ca"], port=0
    )
    svc = await start(nursery, make_config(short_dir, socket=None, tcp=tcp))
    host, port = svc.tcp_addresses[0]
    con = svc.open(KEY, "tls-vm")
    await con.from_vm(b"over tls \xff\x00")
    ep = Endpoint(host=host, port=port, cert=pki["client"], key=pki["client"], ca=pki["server_ca"])
    consoles = await list_consoles(ep)
    assert [c["display"] for c in consoles] == ["tls-vm"]
    stream, status, rest = await attach(ep, AttachRequest("tls-vm", replay=100))
    buf = bytearray(rest)
    assert status["replay"] == 11
    await con.from_vm(b" live")
    with trio.fail_after(5):
        assert await read_exactly(stream, buf, 16) == b"over tls \xff\x00 live"
    await stream.aclose()


@pytest.mark.parametrize("who", ["none", "rogue"])
async def test_client_without_a_good_certificate_is_refused(
    short_dir: Path, pki: dict[str, Path], nursery: trio.Nursery, who: str
) -> None:
    tcp = ConsoleTcpConfig(
        cert=pki["server"], key=pki["server"], client_ca=pki["client_ca"], port=0
    )
    svc = await start(nursery, make_config(short_dir, socket=None, tcp=tcp))
    host, port = svc.tcp_addresses[0]
    svc.open(KEY, "tls-vm")
    cert = None if who == "none" else pki["rogue"]
    ep = Endpoint(host=host, port=port, cert=cert, key=cert, ca=pki["server_ca"])
    with trio.fail_after(10), pytest.raises(ConsoleClientError):
        await list_consoles(ep)
    # the service is fine afterwards
    good = Endpoint(
        host=host, port=port, cert=pki["client"], key=pki["client"], ca=pki["server_ca"]
    )
    assert len(await list_consoles(good)) == 1
