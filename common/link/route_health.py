"""Whether a route is reachable: one WARNING when it goes down, one line when it is back.

A route is *up* until a connect attempt fails (connect, TLS handshake, identity)
and again after one succeeds. Every stream waiting for the route retries on its
own backoff; this keeps the log to one line per outage however many streams
wait and however long it lasts, and counts every failed attempt for the metrics
(``relay_route_up``, ``relay_route_connect_failures_total``, relay.mesh).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from common.ops.wiretext import wire

log = logging.getLogger("relay.route")


class RouteHealth:
    def __init__(self, name: str, on_failure: Callable[[], None] | None = None) -> None:
        self.name = name
        self.on_failure = on_failure
        self.up = True
        self.failures = 0  # failed connect attempts, ever
        self.outages = 0
        self._down_since = 0.0
        self._failures_at_down = 0

    def failed(self, address: str, err: BaseException, now: float) -> None:
        self.failures += 1
        if self.on_failure is not None:
            self.on_failure()
        if not self.up:
            return
        self.up = False
        self.outages += 1
        self._down_since = now
        self._failures_at_down = self.failures - 1
        log.warning(
            "route %s: cannot reach %s: %s; streams wait and retry (logged again once it is back)",
            self.name,
            address,
            wire(str(err) or type(err).__name__),
        )

    def succeeded(self, address: str, now: float) -> None:
        if self.up:
            return
        self.up = True
        log.warning(
            "route %s: %s reachable again after %.1fs (%d failed attempts)",
            self.name,
            address,
            now - self._down_since,
            self.failures - self._failures_at_down,
        )
