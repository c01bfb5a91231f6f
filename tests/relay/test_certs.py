"""vic certs: CA, issued identities, permissions, atomic writes, the CLI."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from common.io import certs
from vic.cli import main


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("key_type", ["ed25519", "p256"])
def test_init_and_issue(tmp_path: Path, key_type: certs.KeyType) -> None:
    ca = certs.init_ca(tmp_path / "ca", key_type=key_type)
    assert mode(ca.key_path) == 0o600 and mode(ca.cert_path) == 0o644
    host = certs.issue(tmp_path / "ca", "host", "esx-01", key_type=key_type, out_dir=tmp_path / "h")
    assert host.identity == "vic://host/esx-01"
    assert mode(host.key_path) == 0o600 and mode(host.cert_path) == 0o644
    cert = certs.load_cert(host.cert_path)
    assert certs.cert_identities(cert) == ["vic://host/esx-01"]
    ca_cert = certs.load_cert(ca.cert_path)
    cert.verify_directly_issued_by(ca_cert)
    info = certs.describe(cert)
    assert info["status"] == "valid" and info["ca"] is False
    assert certs.describe(ca_cert)["ca"] is True
    # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == [
        "host-esx-01.crt",
        "host-esx-01.key",
    ]


def test_refuses_overwrite_and_bad_names(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    with pytest.raises(certs.CertError):
        certs.init_ca(tmp_path)
    certs.issue(tmp_path, "appliance", "vch")
    with pytest.raises(certs.CertError):
        certs.issue(tmp_path, "appliance", "vch")
    for bad in ("", "a/b", "../x", "x" * 64, "a b"):
        with pytest.raises(certs.CertError):
            certs.issue(tmp_path, "host", bad)
    with pytest.raises(certs.CertError):
        certs.issue(tmp_path, "nope", "x")


def test_missing_ca(tmp_path: Path) -> None:
    with pytest.raises(certs.CertError, match="vic certs init"):
        certs.issue(tmp_path, "host", "a")


def test_atomic_write_keeps_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "k.key"
    certs.write_atomic(p, b"old", 0o600)

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        certs.write_atomic(p, b"new", 0o600)
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["k.key"]


def test_expired_describe(tmp_path: Path) -> None:
    import datetime as dt

    certs.init_ca(tmp_path)
    res = certs.issue(
        tmp_path, "host", "old", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=5)
    )
    assert certs.describe(certs.load_cert(res.cert_path))["status"] == "expired"


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "ca")
    assert main(["certs", "init", "--dir", d, "--key-type", "p256"]) == 0
    assert main(["certs", "issue", "--dir", d, "--host", "esx-02"]) == 0
    assert (
        main(
            ["certs", "issue", "--dir", d, "--appliance", "vch-1", "--out-dir", str(tmp_path / "a")]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(["certs", "show", f"{d}/host-esx-02.crt", str(tmp_path / "a" / "appliance-vch-1.crt")])
        == 0
    )
    out = capsys.readouterr().out
    assert "vic://host/esx-02" in out and "vic://appliance/vch-1" in out
    # second init without --force: an error line, exit 1, no traceback
    assert main(["certs", "init", "--dir", d]) == 1
    assert "already holds a CA" in capsys.readouterr().err
    assert main(["certs", "show", str(tmp_path / "missing.crt")]) == 1


def test_cli_subprocess_show_json(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    certs.issue(tmp_path, "host", "h1")
    r = subprocess.run(
        [sys.executable, "-m", "vic.cli", "certs", "show", "--json", str(tmp_path / "host-h1.crt")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"vic://host/h1"' in r.stdout
    x509.load_pem_x509_certificate((tmp_path / "host-h1.crt").read_bytes())
