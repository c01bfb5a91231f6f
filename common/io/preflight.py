"""What ``--check`` (and start-up) finds beyond the config's own validation.

* ``probe_hosts``: every listener host resolves to an address of this machine
  (ConfigError naming the host key otherwise), found without binding any
  configured port, so ``--check`` is safe next to the running daemon.
* ``cert_warnings``: our own certificates that are expired, not valid yet or
  expire within ``SOON`` (a WARNING: the daemon still starts, but peers will
  refuse it, or soon will).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

from common.io.listen import probe_host

SOON = dt.timedelta(days=14)


def probe_hosts(hosts: Iterable[tuple[str, str]]) -> None:
    """``hosts``: (host, key) pairs; raises ConfigError(key) for the first bad one."""
    for host, key in hosts:
        probe_host(host, key)


def cert_warning(path: Path, key: str, now: dt.datetime | None = None) -> str | None:
    """A one-line warning when the certificate at ``path`` is not (or soon not) valid."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None  # unreadable or not PEM: loading it at start says so
    now = now or dt.datetime.now(dt.UTC)
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    if now >= after:
        return f"{key}: certificate {path} expired on {after:%Y-%m-%d %H:%M} UTC"
    if now < before:
        return f"{key}: certificate {path} is not valid before {before:%Y-%m-%d %H:%M} UTC"
    if after - now <= SOON:
        days = (after - now).days
        return (
            f"{key}: certificate {path} expires on {after:%Y-%m-%d %H:%M} UTC "
            f"(in {days} day{'s' if days != 1 else ''})"
        )
    return None


def cert_warnings(certs: Iterable[tuple[Path, str]], now: dt.datetime | None = None) -> list[str]:
    """``certs``: (path, key) pairs of our own certificates."""
    out = []
    for path, key in certs:
        w = cert_warning(path, key, now)
        if w is not None:
            out.append(w)
    return out
