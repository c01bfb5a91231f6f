"""Renewal and revocation of issued certificates; the CA's CRL.

* ``renew``: a new key and validity for an issued certificate, same subject and
  identities; each file is written to a temporary file and renamed over the old one
  (key first), so the old pair stays whole until replaced; a reader that loads
  between the two renames sees a key that does not match and keeps what it has
  (the certificate's rename then triggers another reload). The previous pair is
  kept as ``<name>.prev.crt``/``.prev.key``.
* ``revoke``: add a certificate's serial to the CA's CRL (``ca.crl`` next to
  ``ca.crt``, PEM, signed by the CA key). Every TLS context that trusts the CA
  loads the CRL when present (``common.io.tlsctx``), so a revoked certificate fails
  the handshake with OpenSSL's "certificate revoked"; ``revoked_serials`` lets a
  reload cut the live links of newly revoked peers.

The CRL's next-update is the CA's own expiry: a CRL that lapses would make OpenSSL
refuse every peer, and a CA that lapses needs replacing anyway.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from common.io import certs, tlsctx
from common.io.certs import CertError, Issued

CA_CRL = "ca.crl"


crl_path_for = tlsctx.crl_path  # ca.crl for ca.crt


def load_crl(path: Path) -> x509.CertificateRevocationList | None:
    """The CRL at ``path``, or None when there is none (raises CertError when unreadable)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CertError(f"cannot read {path}: {e.strerror}") from None
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError as e:
        raise CertError(f"{path} is not a PEM CRL: {e}") from None


def revoked_serials(ca_cert: Path) -> frozenset[int]:
    """Serials revoked by the CRL next to ``ca_cert`` (empty without one); the CRL
    must be signed by that CA (CertError otherwise)."""
    crl = load_crl(crl_path_for(ca_cert))
    if crl is None:
        return frozenset()
    ca = certs.load_cert(ca_cert)
    pub = ca.public_key()
    if not isinstance(pub, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise CertError(f"unsupported CA key type in {ca_cert}")
    if not crl.is_signature_valid(pub):
        raise CertError(f"{crl_path_for(ca_cert)} is not signed by the CA in {ca_cert}")
    return frozenset(r.serial_number for r in crl)


def write_crl(
    ca_dir: Path, serials: dict[int, dt.datetime], now: dt.datetime | None = None
) -> Path:
    """Sign and write the CA's CRL listing ``serials`` (serial -> revocation time)."""
    ca_cert, ca_key = certs.load_ca(ca_dir)
    now = now or dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(max(ca_cert.not_valid_after_utc, now + dt.timedelta(days=1)))
    )
    for serial, when in sorted(serials.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    crl = builder.sign(ca_key, certs._sig_hash(ca_key))
    path = Path(ca_dir) / CA_CRL
    certs.write_atomic(path, crl.public_bytes(Encoding.PEM), 0o644)
    return path


def revoke(ca_dir: Path, serial: int, now: dt.datetime | None = None) -> tuple[Path, bool]:
    """Add ``serial`` to the CA's CRL; (CRL path, False if it was already revoked)."""
    now = now or dt.datetime.now(dt.UTC)
    crl = load_crl(Path(ca_dir) / CA_CRL)
    listed = {r.serial_number: r.revocation_date_utc for r in crl} if crl is not None else {}
    fresh = serial not in listed
    listed.setdefault(serial, now)
    return write_crl(ca_dir, listed, now), fresh


def parse_serial(text: str) -> int:
    """A serial as ``vic certs show`` prints it (hex, optional ``0x`` and colons)."""
    t = text.lower().removeprefix("0x").replace(":", "")
    try:
        return int(t, 16)
    except ValueError:
        raise CertError(f"not a hexadecimal serial: {text!r}") from None


def _kind_name(cert: x509.Certificate) -> tuple[str, str]:
    ids = certs.cert_identities(cert)
    if len(ids) != 1:
        raise CertError(f"certificate has {len(ids)} vic:// identities; cannot renew")
    kind, _, name = ids[0].removeprefix(f"{certs.URI_SCHEME}://").partition("/")
    return kind, name


def renew(
    ca_dir: Path,
    cert_path: Path,
    *,
    key_path: Path | None = None,
    key_type: certs.KeyType | None = None,
    days: int = certs.DEFAULT_LEAF_DAYS,
) -> Issued:
    """Re-issue the certificate at ``cert_path`` with a new key and validity."""
    cert_path = Path(cert_path)
    key_path = Path(key_path) if key_path is not None else cert_path.with_suffix(".key")
    old = certs.load_cert(cert_path)
    kind, name = _kind_name(old)
    if key_type is None:
        pub = old.public_key()
        key_type = "p256" if isinstance(pub, ec.EllipticCurvePublicKey) else "ed25519"
    try:
        san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns = ()
    ca_cert, ca_key = certs.load_ca(ca_dir)
    cert, key = certs.build_leaf(
        ca_cert, ca_key, kind, name, key_type=key_type, days=days, dns_names=dns
    )
    for src in (cert_path, key_path):  # keep the previous pair, for a roll-back
        if src.exists():
            prev = src.with_name(f"{src.stem}.prev{src.suffix}")
            shutil.copy2(src, prev)
            os.chmod(prev, 0o600 if src is key_path else 0o644)
    certs.write_atomic(key_path, certs.key_pem(key), 0o600)
    certs.write_atomic(cert_path, certs.cert_pem(cert), 0o644)
    return Issued(cert_path, key_path, certs.identity_uri(kind, name), cert.not_valid_after_utc)
