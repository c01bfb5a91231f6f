"""Contexts that follow their files: certificate, key, CA and CRL re-read in place.

Every context ``common.io.tlsctx`` builds from files is tracked here (weakly), with
the files it read. ``refresh()`` (a daemon calls it on SIGHUP and when its
certificate files change, see ``common.io.certwatch``) re-stats them and, for each
context whose files changed, loads them into that same context object: listeners
that hold it (``trio.SSLListener``, accept loops) use the new certificate for the
next handshake without being restarted, and connections already made keep
theirs (OpenSSL copies the certificate into each connection). A CRL that appeared
or grew is added to the context's trust store with the leaf CRL check turned on
(OpenSSL picks the newest CRL for an issuer). A replaced CA is added, the old one
stays trusted until restart: withdraw trust by revoking, not by swapping CAs.

Files are first loaded into a throw-away context; a pair that does not match (a
renewal half done) or a file that does not parse leaves the live context as it
was and is tried again at the next refresh. Subscribers (peer-link servers) are
told after each refresh, to close the live links of peers the CRL now revokes.
"""

from __future__ import annotations

import logging
import os
import ssl
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger("tls")

Stamp = tuple[tuple[int, int, int], ...]
PathLike = str | os.PathLike[str]


def stamp(paths: Iterable[PathLike]) -> Stamp:
    """(inode, mtime_ns, size) of each path, zeros for a missing one."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


def crl_path(ca: PathLike) -> Path:
    """The CRL that goes with the CA file ``ca``: ``ca.crl`` for ``ca.crt``."""
    p = Path(os.fspath(ca))
    return p.with_name(p.stem + ".crl")


@dataclass
class _Files:
    chain: tuple[str, str | None] | None = None
    cas: list[str] = field(default_factory=list)
    seen: Stamp = ()

    def paths(self) -> list[str]:
        out = list(self.chain[0:1]) if self.chain else []
        if self.chain and self.chain[1]:
            out.append(self.chain[1])
        for ca in self.cas:
            out += [ca, os.fspath(crl_path(ca))]
        return out


_live: weakref.WeakKeyDictionary[ssl.SSLContext, _Files] = weakref.WeakKeyDictionary()


def _files(ctx: ssl.SSLContext) -> _Files:
    f = _live.get(ctx)
    if f is None:
        f = _live[ctx] = _Files()
    return f


def track_chain(ctx: ssl.SSLContext, cert: PathLike, key: PathLike | None) -> None:
    f = _files(ctx)
    f.chain = (os.fspath(cert), None if key is None else os.fspath(key))
    f.seen = stamp(f.paths())


def track_ca(ctx: ssl.SSLContext, ca: PathLike) -> None:
    f = _files(ctx)
    f.cas.append(os.fspath(ca))
    f.seen = stamp(f.paths())


def load_ca(ctx: ssl.SSLContext, ca: PathLike) -> None:
    """Trust ``ca`` and its CRL (leaf check) when there is one."""
    ctx.load_verify_locations(cafile=os.fspath(ca))
    crl = crl_path(ca)
    if crl.is_file():
        ctx.load_verify_locations(cafile=os.fspath(crl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def _reload(ctx: ssl.SSLContext, f: _Files) -> None:
    trial = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # everything loads, or nothing changes
    if f.chain is not None:
        trial.load_cert_chain(*f.chain)
    for ca in f.cas:
        load_ca(trial, ca)
    if f.chain is not None:
        ctx.load_cert_chain(*f.chain)
    for ca in f.cas:
        load_ca(ctx, ca)


class Refreshed(Protocol):
    def refreshed(self) -> None:
        """Called after each ``refresh()`` (e.g. to cut links of revoked peers)."""


_subscribers: weakref.WeakSet[Refreshed] = weakref.WeakSet()


def subscribe(obj: Refreshed) -> None:
    """Have ``obj.refreshed()`` called after every ``refresh()`` (held weakly)."""
    _subscribers.add(obj)


def refresh() -> int:
    """Re-read the files of every tracked context whose files changed, then tell the
    subscribers; how many contexts changed."""
    done = 0
    for ctx, f in list(_live.items()):
        now = stamp(f.paths())
        if now == f.seen:
            continue
        try:
            _reload(ctx, f)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            log.error("cannot re-read %s: %s", ", ".join(f.paths()), " ".join(str(e).split()))
            continue
        f.seen = now
        done += 1
    if done:
        log.info("re-read the certificates of %d TLS context%s", done, "" if done == 1 else "s")
    for sub in list(_subscribers):
        sub.refreshed()
    return done
