"""Certificate files as a daemon watches them: reload when they change, expiry as a metric.

* ``watch_files``: wakes on inotify events in the directories of the given files
  and, once the directory has been quiet for ``settle`` seconds (a renewal renames
  a key and then a certificate), calls ``on_change`` if any file's identity,
  size or mtime differs from what was seen last. The daemons pass their reload
  (the same as SIGHUP, with the running config), so a renewed certificate or a
  new CRL applies to new handshakes without a restart; live connections keep the
  context they were made with.
* ``CertExpiry``: the gauge ``<prefix>_cert_not_after_timestamp_seconds{cert}``,
  the Unix time each certificate expires, labelled by its config key (a bounded
  set); updated at start and on every reload.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from prometheus_client import CollectorRegistry, Gauge

from common.io.inotify import IN_CLOSE_WRITE, IN_CREATE, IN_DELETE, IN_MOVED_TO, Inotify
from common.io.tlsrefresh import stamp

log = logging.getLogger("certwatch")

_MASK = IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE


async def watch_files(
    paths: Callable[[], list[Path]],
    on_change: Callable[[], Awaitable[object]],
    *,
    settle: float = 0.2,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``on_change`` whenever the files ``paths()`` names change (``paths`` is
    asked again after each change: a reload may name other files)."""
    with Inotify() as ino:
        watched: set[Path] = set()
        current = paths()
        last = stamp(current)
        _watch_dirs(ino, current, watched)
        task_status.started()
        while True:
            await ino.wait()
            while True:  # settle: wait for a quiet moment
                with trio.move_on_after(settle) as quiet:
                    await ino.wait()
                if quiet.cancelled_caught:
                    break
            now = stamp(current)
            if now == last:
                continue
            log.info("certificate files changed: reloading them")
            try:
                await on_change()
            except (OSError, ValueError) as e:  # the reload reports its own errors
                log.error("reload after a certificate change failed: %s", e)
            current = paths()
            last = stamp(current)
            _watch_dirs(ino, current, watched)


def _watch_dirs(ino: Inotify, paths: list[Path], watched: set[Path]) -> None:
    for d in {Path(p).parent for p in paths} - watched:
        try:
            ino.add_watch(str(d), _MASK)
            watched.add(d)
        except OSError as e:
            log.warning("cannot watch %s for certificate changes: %s", d, e.strerror or e)


class CertExpiry:
    """``<prefix>_cert_not_after_timestamp_seconds{cert}`` on ``registry``."""

    def __init__(self, prefix: str, registry: CollectorRegistry) -> None:
        self.gauge = Gauge(
            f"{prefix}_cert_not_after_timestamp_seconds",
            "when each certificate in use expires (Unix time), by config key",
            ["cert"],
            registry=registry,
        )
        self._keys: set[str] = set()

    def update(self, certs: Iterable[tuple[Path, str]]) -> None:
        """Set the gauge for (path, config key) pairs; forget keys no longer given."""
        seen: set[str] = set()
        for path, key in certs:
            try:
                cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
            except (OSError, ValueError):
                continue  # loading it for TLS says what is wrong
            self.gauge.labels(key).set(cert.not_valid_after_utc.timestamp())
            seen.add(key)
        for key in self._keys - seen:
            self.gauge.remove(key)
        self._keys = seen
