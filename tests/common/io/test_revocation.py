"""vic certs renew / revoke: same identity with a new key, the CA's CRL, and
OpenSSL refusing a revoked peer in a real TLS 1.3 handshake (reason ``revoked``)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from common.io import certs, revocation, tlsctx
from common.link.tls import PeerIdentityError, refusal_reason
from tests.common.link.test_tls import run_pair
from tests.relay.pki_helpers import Pki
from vic.cli import main


def test_renew_keeps_identity_with_new_key_and_serial(tmp_path: Path) -> None:
    certs.init_ca(tmp_path, key_type="p256")
    old = certs.issue(tmp_path, "host", "esx-01", key_type="p256", dns_names=("esx-01.lan",))
    old_cert, old_key = certs.load_cert(old.cert_path), old.key_path.read_bytes()
    new = revocation.renew(tmp_path, old.cert_path, days=30)
    cert = certs.load_cert(new.cert_path)
    assert new.identity == "vic://host/esx-01"
    assert certs.cert_identities(cert) == ["vic://host/esx-01"]
    assert cert.serial_number != old_cert.serial_number
    assert new.key_path.read_bytes() != old_key
    assert certs.describe(cert)["key"] == "ecdsa-secp256r1"  # the old key's type
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["esx-01.lan"]
    cert.verify_directly_issued_by(certs.load_cert(tmp_path / certs.CA_CERT))
    assert (tmp_path / "host-esx-01.prev.key").read_bytes() == old_key
    assert stat.S_IMODE(os.stat(tmp_path / "host-esx-01.prev.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(new.key_path).st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_revoke_writes_a_crl_signed_by_the_ca(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    a, b = certs.issue(tmp_path, "host", "a"), certs.issue(tmp_path, "operator", "alice")
    assert revocation.revoked_serials(tmp_path / certs.CA_CERT) == frozenset()
    sa = certs.load_cert(a.cert_path).serial_number
    sb = certs.load_cert(b.cert_path).serial_number
    assert revocation.revoke(tmp_path, sa)[1] is True
    path, fresh = revocation.revoke(tmp_path, sb)
    assert path == tmp_path / "ca.crl" == tlsctx.crl_path(tmp_path / "ca.crt")
    assert fresh and revocation.revoke(tmp_path, sb)[1] is False
    assert revocation.revoked_serials(tmp_path / certs.CA_CERT) == {sa, sb}
    # a CRL signed by another CA is not believed
    other = tmp_path / "other"
    certs.init_ca(other)
    revocation.revoke(other, 1)
    (tmp_path / "ca.crl").write_bytes((other / "ca.crl").read_bytes())
    with pytest.raises(certs.CertError, match="not signed by the CA"):
        revocation.revoked_serials(tmp_path / certs.CA_CERT)


def test_cli_issue_operator_renew_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIC_CA_DIR", str(tmp_path))
    assert main(["certs", "init"]) == 0
    assert main(["certs", "issue", "operator", "alice"]) == 0
    assert main(["certs", "issue", "--host", "esx-1", "--dir", str(tmp_path)]) == 0
    crt = tmp_path / "operator-alice.crt"
    assert certs.cert_identities(certs.load_cert(crt)) == ["vic://operator/alice"]
    assert main(["certs", "issue", "host", "x", "--operator", "y"]) == 1  # named twice
    old = certs.load_cert(crt).serial_number
    assert main(["certs", "renew", str(crt)]) == 0
    assert f"serial {certs.load_cert(crt).serial_number:x}" in capsys.readouterr().out
    assert main(["certs", "revoke", "--serial", f"{old:x}"]) == 0
    assert main(["certs", "revoke", str(crt)]) == 0
    assert "already revoked" not in capsys.readouterr().out
    assert revocation.revoked_serials(tmp_path / "ca.crt") == {
        old,
        certs.load_cert(crt).serial_number,
    }
    assert main(["certs", "revoke", "--serial", "zz"]) == 1


def test_show_reads_the_crl_beside_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIC_CA_DIR", str(tmp_path))
    assert main(["certs", "init"]) == 0
    assert main(["certs", "issue", "operator", "alice"]) == 0
    assert main(["certs", "issue", "operator", "bob"]) == 0
    alice, bob = str(tmp_path / "operator-alice.crt"), str(tmp_path / "operator-bob.crt")
    capsys.readouterr()
    assert main(["certs", "show", alice]) == 0
    assert "revoked     False" in capsys.readouterr().out
    assert main(["certs", "revoke", alice]) == 0
    capsys.readouterr()
    assert main(["certs", "show", alice, bob]) == 1
    out = capsys.readouterr().out
    assert "status      revoked" in out and "revoked     True" in out
    assert main(["certs", "show", "--json", alice, bob]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert [(i["status"], i["revoked"]) for i in shown] == [("revoked", True), ("valid", False)]
    other = tmp_path / "other"  # another CA's CRL does not revoke alice
    assert main(["certs", "init", "--dir", str(other)]) == 0
    assert main(["certs", "revoke", "--dir", str(other), "--serial", "1"]) == 0
    capsys.readouterr()
    assert main(["certs", "show", "--dir", str(other), "--json", alice]) == 0
    assert json.loads(capsys.readouterr().out)[0]["revoked"] is False


@pytest.mark.parametrize("key_type", ["ed25519", "p256"])
@pytest.mark.parametrize("revoked_side", ["client", "server"])
async def test_revoked_peer_is_refused_in_the_handshake(
    tmp_path: Path, revoked_side: str, key_type: certs.KeyType
) -> None:
    pki = Pki(tmp_path, key_type)
    s, c = pki.issue("host", "b"), pki.issue("host", "a")
    victim = c if revoked_side == "client" else s
    revocation.revoke(pki.root, certs.load_cert(victim.cert).serial_number)
    srv, cli = await run_pair(s, c, {"vic://host/a"}, {"vic://host/b"})
    refused = srv if revoked_side == "client" else cli
    assert isinstance(refused, Exception) and not isinstance(refused, PeerIdentityError)
    assert refusal_reason(refused) == "revoked"
    # an unrevoked pair under the same CRL still works
    ok_s, ok_c = pki.issue("host", "b2"), pki.issue("host", "a2")
    srv, cli = await run_pair(ok_s, ok_c, {"vic://host/a2"}, {"vic://host/b2"})
    assert srv == "vic://host/a2" and cli == ("vic://host/b2", b"ok")
