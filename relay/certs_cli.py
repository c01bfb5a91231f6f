"""``vic certs init | issue | renew | revoke | show``: the cluster CA and its certificates.

``issue`` takes the identity as ``KIND NAME`` (``vic certs issue operator alice``) or
as ``--host/--appliance/--operator NAME``; the CA directory is ``--dir`` (default
``$VIC_CA_DIR``, else ``/etc/vic/ca``). ``show`` reads that CA's CRL and says
``revoked`` (status and ``revoked`` field) for a certificate it lists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from common.io import certs, revocation


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="certs_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("init", help="create the cluster CA (ca.crt, ca.key)")
    _ca_dir(p)
    p.add_argument("--name", default="vic cluster CA", help="CA common name")
    p.add_argument("--key-type", choices=certs.KEY_TYPES, default="ed25519")
    p.add_argument("--days", type=int, default=certs.DEFAULT_CA_DAYS)
    p.add_argument("--force", action="store_true", help="replace an existing CA")

    p = sub.add_parser("issue", help="issue a host, appliance or operator certificate")
    _ca_dir(p)
    p.add_argument("kind", nargs="?", choices=certs.KINDS, help="identity kind")
    p.add_argument("name", nargs="?", help="identity name: vic://KIND/NAME")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--host", metavar="NAME", help="identity vic://host/NAME")
    who.add_argument("--appliance", metavar="NAME", help="identity vic://appliance/NAME")
    who.add_argument("--operator", metavar="NAME", help="identity vic://operator/NAME")
    p.add_argument("--out-dir", type=Path, help="where to write (default: the CA directory)")
    p.add_argument("--key-type", choices=certs.KEY_TYPES, default="ed25519")
    p.add_argument("--days", type=int, default=certs.DEFAULT_LEAF_DAYS)
    p.add_argument("--dns", action="append", default=[], help="extra DNS SAN (repeatable)")
    p.add_argument("--force", action="store_true", help="replace existing files")

    p = sub.add_parser("renew", help="re-issue a certificate: same identity, new key and dates")
    _ca_dir(p)
    p.add_argument("cert", type=Path, help="the certificate to renew (its key: same name .key)")
    p.add_argument("--key", type=Path, help="its key file (default: CERT with .key)")
    p.add_argument("--key-type", choices=certs.KEY_TYPES, help="default: the old key's type")
    p.add_argument("--days", type=int, default=certs.DEFAULT_LEAF_DAYS)

    p = sub.add_parser("revoke", help="add a certificate to the CA's CRL (ca.crl)")
    _ca_dir(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("cert", nargs="?", type=Path, help="the certificate to revoke")
    what.add_argument("--serial", help="revoke by serial (hex, as `show` prints it)")

    p = sub.add_parser("show", help="describe certificates (revoked: per the CA's CRL)")
    _ca_dir(p)
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _ca_dir(p: argparse.ArgumentParser) -> None:
    default = Path(os.environ.get("VIC_CA_DIR") or "/etc/vic/ca")
    p.add_argument("--dir", type=Path, default=default, help=f"CA directory (default {default})")


_SHOWN = (
    "subject",
    "issuer",
    "identities",
    "key",
    "ca",
    "not_before",
    "not_after",
    "status",
    "revoked",
    "serial",
    "sha256",
)


def run(args: argparse.Namespace) -> int:
    actions = {
        "init": _init,
        "issue": _issue,
        "renew": _renew,
        "revoke": _revoke,
        "show": _show,
    }
    action = actions.get(args.certs_command)
    if action is None:
        return 2
    try:
        return action(args)
    except certs.CertError as e:
        print(f"vic certs: {e}", file=sys.stderr)
        return 1


def _init(args: argparse.Namespace) -> int:
    if args.days <= 0:
        raise certs.CertError("--days must be positive")
    res = certs.init_ca(
        args.dir, name=args.name, key_type=args.key_type, days=args.days, force=args.force
    )
    print(f"CA written: {res.cert_path} (key {res.key_path}, expires {res.not_after:%Y-%m-%d})")
    return 0


def _issue(args: argparse.Namespace) -> int:
    if args.days <= 0:
        raise certs.CertError("--days must be positive")
    kind, name = _identity(args)
    res = certs.issue(
        args.dir,
        kind,
        name,
        out_dir=args.out_dir,
        key_type=args.key_type,
        days=args.days,
        dns_names=tuple(args.dns),
        force=args.force,
    )
    print(f"{res.identity}: {res.cert_path} (key {res.key_path}, expires {res.not_after:%Y-%m-%d})")
    return 0


def _identity(args: argparse.Namespace) -> tuple[str, str]:
    flagged = [(k, getattr(args, k)) for k in ("host", "appliance", "operator")]
    chosen = [(k, v) for k, v in flagged if v]
    if args.kind is not None and args.name is not None and not chosen:
        return str(args.kind), str(args.name)
    if len(chosen) == 1 and args.kind is None:
        return chosen[0]
    raise certs.CertError("name the identity once: KIND NAME or --host/--appliance/--operator NAME")


def _renew(args: argparse.Namespace) -> int:
    if args.days <= 0:
        raise certs.CertError("--days must be positive")
    res = revocation.renew(
        args.dir, args.cert, key_path=args.key, key_type=args.key_type, days=args.days
    )
    serial = format(certs.load_cert(res.cert_path).serial_number, "x")
    print(
        f"{res.identity}: renewed {res.cert_path} (key {res.key_path}, serial {serial}, "
        f"expires {res.not_after:%Y-%m-%d})"
    )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if args.serial is not None:
        serial = revocation.parse_serial(args.serial)
    else:
        serial = certs.load_cert(args.cert).serial_number
    path, fresh = revocation.revoke(args.dir, serial)
    state = "revoked" if fresh else "already revoked"
    print(f"serial {serial:x} {state}: {path} (reload or let the daemons see the file change)")
    return 0


def _revoked_by_ca(ca_dir: Path) -> tuple[str, frozenset[int]]:
    """The CA's subject and the serials its CRL (``ca.crl`` beside ``ca.crt``) revokes;
    ("", empty) without a CA there."""
    ca_cert = ca_dir / certs.CA_CERT
    if not ca_cert.is_file():
        return "", frozenset()
    subject = certs.load_cert(ca_cert).subject.rfc4514_string()
    return subject, revocation.revoked_serials(ca_cert)


def _show(args: argparse.Namespace) -> int:
    ca_subject, revoked = _revoked_by_ca(args.dir)
    infos = []
    for path in args.paths:
        cert = certs.load_cert(path)
        info = certs.describe(cert)
        info["path"] = str(path)
        info["revoked"] = cert.serial_number in revoked and info["issuer"] == ca_subject
        if info["revoked"]:
            info["status"] = "revoked"
        infos.append(info)
    if args.json:
        print(json.dumps(infos, indent=2))
    else:
        for info in infos:
            print(f"{info['path']}:")
            for k in _SHOWN:
                v = info[k]
                if isinstance(v, list):
                    v = ", ".join(v) or "-"
                print(f"  {k:11} {v}")
    return 1 if any(i["status"] != "valid" for i in infos) else 0
