"""``vic certs init | issue | show``: the cluster CA and peer-link certificates."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.io import certs


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="certs_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("init", help="create the cluster CA (ca.crt, ca.key)")
    p.add_argument("--dir", type=Path, required=True, help="CA directory")
    p.add_argument("--name", default="vic cluster CA", help="CA common name")
    p.add_argument("--key-type", choices=certs.KEY_TYPES, default="ed25519")
    p.add_argument("--days", type=int, default=certs.DEFAULT_CA_DAYS)
    p.add_argument("--force", action="store_true", help="replace an existing CA")

    p = sub.add_parser("issue", help="issue a relay (host) or appliance certificate")
    p.add_argument("--dir", type=Path, required=True, help="CA directory")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--host", metavar="NAME", help="identity vic://host/NAME")
    who.add_argument("--appliance", metavar="NAME", help="identity vic://appliance/NAME")
    p.add_argument("--out-dir", type=Path, help="where to write (default: the CA directory)")
    p.add_argument("--key-type", choices=certs.KEY_TYPES, default="ed25519")
    p.add_argument("--days", type=int, default=certs.DEFAULT_LEAF_DAYS)
    p.add_argument("--dns", action="append", default=[], help="extra DNS SAN (repeatable)")
    p.add_argument("--force", action="store_true", help="replace existing files")

    p = sub.add_parser("show", help="describe certificates")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")


_SHOWN = (
    "subject",
    "issuer",
    "identities",
    "key",
    "ca",
    "not_before",
    "not_after",
    "status",
    "serial",
    "sha256",
)


def run(args: argparse.Namespace) -> int:
    actions = {"init": _init, "issue": _issue, "show": _show}
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
    kind, name = ("host", args.host) if args.host else ("appliance", args.appliance)
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


def _show(args: argparse.Namespace) -> int:
    infos = []
    for path in args.paths:
        info = certs.describe(certs.load_cert(path))
        info["path"] = str(path)
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
