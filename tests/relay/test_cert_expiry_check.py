"""`vic relay --check` warns about the cluster CA's expiry too, not only the relay's
own certificate (a lapsed CA makes every peer refuse every other)."""

from __future__ import annotations

from pathlib import Path

from common.io import certs
from tests.relay.test_operator_errors import MINIMAL, vic_relay


def test_ca_expiring_soon_is_a_warning_in_check(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    certs.init_ca(ca_dir, days=5)
    leaf = certs.issue(ca_dir, "host", "esx-a", days=30)
    cfg = tmp_path / "relay.toml"
    cfg.write_text(
        MINIMAL + f'[peer]\ntls = {{ cert = "{leaf.cert_path}", key = "{leaf.key_path}", '
        f'ca = "{ca_dir / certs.CA_CERT}" }}\n'
    )
    r = vic_relay(cfg, "--check")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "warning: peer.tls.ca:" in lines[0] and "expires on" in lines[0]
