"""Contexts that follow their files: certificate, key, CA and CRL re-read in place.

Every context ``common.io.tlsctx`` builds from files is tracked here (weakly), with
the files it read. ``refresh()`` (a daemon calls it on SIGHUP and when its
certificate files change, see ``common.io.certwatch``) re-stats them and, for each
context whose files changed, loads them into that same context object: listeners
that hold it (``trio.SSLListener``, accept loops) use the new certificate for the
next handshake without being restarted, and connections already made keep
theirs (OpenSSL copies the certificate into each connection). A CRL that appeared
or grew turns the leaf CRL check on (OpenSSL picks the newest CRL for an issuer).

Trust is rebuilt, never added to: OpenSSL cannot empty a context's trust store, so
once a context's CA or CRL files change, a fresh copy of it is built (its settings
copied, all its files loaded anew) and every connection the live context makes
from then on is made by that copy (``successor``; ``tlsctx.FollowingContext``).
A CA replaced in its file stops being trusted for new handshakes at that reload,
connections made before keep theirs, and the copy's own session cache and ticket
keys mean a session from before the change cannot be resumed past the new trust.

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
    ca_seen: Stamp = ()
    trust: ssl.SSLContext | None = None  # rebuilt at the last CA/CRL change

    def ca_paths(self) -> list[str]:
        return [p for ca in self.cas for p in (ca, os.fspath(crl_path(ca)))]

    def paths(self) -> list[str]:
        out = list(self.chain[0:1]) if self.chain else []
        if self.chain and self.chain[1]:
            out.append(self.chain[1])
        return out + self.ca_paths()


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
    f.seen, f.ca_seen = stamp(f.paths()), stamp(f.ca_paths())


def load_ca(ctx: ssl.SSLContext, ca: PathLike) -> None:
    """Trust ``ca`` and its CRL (leaf check) when there is one."""
    ctx.load_verify_locations(cafile=os.fspath(ca))
    crl = crl_path(ca)
    if crl.is_file():
        ctx.load_verify_locations(cafile=os.fspath(crl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def _copy(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """A context with ``ctx``'s settings (those ``common.io.tlsctx`` sets) and no files."""
    fresh = ssl.SSLContext(ctx.protocol)
    fresh.minimum_version, fresh.maximum_version = ctx.minimum_version, ctx.maximum_version
    fresh.options = ctx.options
    if ctx.protocol == ssl.PROTOCOL_TLS_CLIENT:
        fresh.check_hostname = ctx.check_hostname
    else:
        fresh.num_tickets = ctx.num_tickets
    fresh.verify_mode = ctx.verify_mode
    fresh.verify_flags = ctx.verify_flags & ~ssl.VERIFY_CRL_CHECK_LEAF  # per the files
    if ctx.keylog_filename:
        fresh.keylog_filename = ctx.keylog_filename
    return fresh


def _reload(ctx: ssl.SSLContext, f: _Files, ca_changed: bool) -> None:
    fresh = _copy(ctx)  # everything loads, or nothing changes
    if f.chain is not None:
        fresh.load_cert_chain(*f.chain)
    for ca in f.cas:
        load_ca(fresh, ca)
    if f.chain is not None:
        ctx.load_cert_chain(*f.chain)
    if ca_changed or f.trust is not None:
        f.trust = fresh


def successor(ctx: ssl.SSLContext) -> ssl.SSLContext | None:
    """The context that makes ``ctx``'s new connections: its copy rebuilt at the last
    change of its CA or CRL files; None before any (``ctx`` itself serves)."""
    f = _live.get(ctx)
    return None if f is None else f.trust


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
        ca_changed = stamp(f.ca_paths()) != f.ca_seen
        try:
            _reload(ctx, f, ca_changed)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            log.error("cannot re-read %s: %s", ", ".join(f.paths()), " ".join(str(e).split()))
            continue
        f.seen, f.ca_seen = now, stamp(f.ca_paths())
        done += 1
    if done:
        log.info("re-read the certificates of %d TLS context%s", done, "" if done == 1 else "s")
    for sub in list(_subscribers):
        sub.refreshed()
    return done
