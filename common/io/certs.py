"""The cluster CA and the certificates relays and appliances present on peer links.

Identities are URI subject-alternative names: ``vic://host/<name>`` for a relay
on an ESX host, ``vic://appliance/<name>`` for an appliance endpoint and
``vic://operator/<name>`` for a person's client certificate (the console's TCP
endpoint). The peer
link checks that URI against the configured peers (see ``common.link.tls``).

Files: ``ca.crt`` / ``ca.key`` in the CA directory; ``<kind>-<name>.crt`` /
``.key`` for issued certificates. Keys are written 0600 and certificates 0644,
each atomically (a temporary file in the same directory, fsync, rename), so a
reader never sees half a file and a key is never readable by others, not even
for a moment.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ed25519", "p256"]
Kind = Literal["host", "appliance", "operator"]
KEY_TYPES: tuple[KeyType, ...] = ("ed25519", "p256")
KINDS: tuple[Kind, ...] = ("host", "appliance", "operator")
URI_SCHEME = "vic"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
DEFAULT_CA_DAYS = 3650
DEFAULT_LEAF_DAYS = 397
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class CertError(Exception):
    """A certificate operation failed for a reason the operator can fix."""


def identity_uri(kind: str, name: str) -> str:
    """``vic://host/esx-01`` style identity for ``kind`` and ``name``."""
    if kind not in KINDS:
        raise CertError(f"unknown identity kind {kind!r} (expected host, appliance or operator)")
    check_name(name)
    return f"{URI_SCHEME}://{kind}/{name}"


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise CertError(f"invalid name {name!r}: 1-63 characters of letters, digits, '.', '_', '-'")
    return name


def generate_key(key_type: KeyType) -> PrivateKey:
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise CertError(f"unknown key type {key_type!r} (expected ed25519 or p256)")


def _sig_hash(key: PrivateKey) -> hashes.SHA256 | None:
    # Ed25519 signs without a separate digest.
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode``, atomically; never world-readable midway."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600; widen (cert) only once written
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class Issued:
    cert_path: Path
    key_path: Path
    identity: str | None
    not_after: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signing only; a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def build_ca(
    name: str = "vic cluster CA",
    *,
    key_type: KeyType = "ed25519",
    days: int = DEFAULT_CA_DAYS,
    not_before: dt.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    key = generate_key(key_type)
    start = not_before or _now() - dt.timedelta(minutes=5)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, _sig_hash(key))
    )
    return cert, key


def build_leaf(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    kind: str,
    name: str,
    *,
    key_type: KeyType = "ed25519",
    days: int = DEFAULT_LEAF_DAYS,
    not_before: dt.datetime | None = None,
    dns_names: tuple[str, ...] = (),
) -> tuple[x509.Certificate, PrivateKey]:
    """A leaf certificate for ``kind``/``name``, usable as TLS client and server."""
    uri = identity_uri(kind, name)
    key = generate_key(key_type)
    start = not_before or _now() - dt.timedelta(minutes=5)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    sans += [x509.DNSName(d) for d in dns_names]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, _sig_hash(ca_key))
    )
    return cert, key


def init_ca(
    ca_dir: Path,
    *,
    name: str = "vic cluster CA",
    key_type: KeyType = "ed25519",
    days: int = DEFAULT_CA_DAYS,
    force: bool = False,
) -> Issued:
    ca_dir = Path(ca_dir)
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    if not force and (cert_path.exists() or key_path.exists()):
        raise CertError(f"{ca_dir} already holds a CA (use --force to replace it)")
    cert, key = build_ca(name, key_type=key_type, days=days)
    write_atomic(key_path, key_pem(key), 0o600)
    write_atomic(cert_path, cert_pem(cert), 0o644)
    return Issued(cert_path, key_path, None, cert.not_valid_after_utc)


def load_ca(ca_dir: Path) -> tuple[x509.Certificate, PrivateKey]:
    ca_dir = Path(ca_dir)
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), None)
    except FileNotFoundError as e:
        raise CertError(f"no CA in {ca_dir} ({e.filename} missing; run `vic certs init`)") from None
    except ValueError as e:
        raise CertError(f"cannot read the CA in {ca_dir}: {e}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise CertError(f"unsupported CA key type in {ca_dir}")
    return cert, key


def issue(
    ca_dir: Path,
    kind: str,
    name: str,
    *,
    out_dir: Path | None = None,
    key_type: KeyType = "ed25519",
    days: int = DEFAULT_LEAF_DAYS,
    not_before: dt.datetime | None = None,
    dns_names: tuple[str, ...] = (),
    force: bool = False,
) -> Issued:
    ca_cert, ca_key = load_ca(ca_dir)
    out = Path(out_dir) if out_dir is not None else Path(ca_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o755)
    stem = f"{kind}-{check_name(name)}"
    cert_path, key_path = out / f"{stem}.crt", out / f"{stem}.key"
    if not force and (cert_path.exists() or key_path.exists()):
        raise CertError(f"{cert_path} already exists (use --force to replace it)")
    cert, key = build_leaf(
        ca_cert,
        ca_key,
        kind,
        name,
        key_type=key_type,
        days=days,
        not_before=not_before,
        dns_names=dns_names,
    )
    write_atomic(key_path, key_pem(key), 0o600)
    write_atomic(cert_path, cert_pem(cert), 0o644)
    return Issued(cert_path, key_path, identity_uri(kind, name), cert.not_valid_after_utc)


def cert_identities(cert: x509.Certificate) -> list[str]:
    """The ``vic://`` URI SANs of ``cert``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [
        u
        for u in san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(f"{URI_SCHEME}://")
    ]


def describe(cert: x509.Certificate, now: dt.datetime | None = None) -> dict[str, object]:
    now = now or _now()
    pub = cert.public_key()
    if isinstance(pub, ed25519.Ed25519PublicKey):
        key_desc = "ed25519"
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        key_desc = f"ecdsa-{pub.curve.name}"
    else:
        key_desc = type(pub).__name__
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    status = "valid" if nb <= now <= na else ("expired" if now > na else "not yet valid")
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "ca": is_ca,
        "identities": cert_identities(cert),
        "key": key_desc,
        "not_before": nb.isoformat(),
        "not_after": na.isoformat(),
        "status": status,
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


def load_cert(path: Path) -> x509.Certificate:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CertError(f"cannot read {path}: {e.strerror}") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        try:
            return x509.load_der_x509_certificate(data)
        except ValueError as e:
            raise CertError(f"{path} is not a certificate: {e}") from None
