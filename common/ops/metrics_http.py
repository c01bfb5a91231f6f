"""A tiny trio HTTP server for a daemon's Prometheus registry and its health checks.

* ``/metrics``: the registry (text format);
* ``/healthz``: 200 while the process serves HTTP at all (liveness);
* ``/readyz``: 200 when the daemon says it is ready (listeners bound, not draining),
  503 with the reason otherwise (a load balancer or an orchestrator's readiness probe).

``standard_collectors`` adds what every daemon exports besides its own metrics: the
process (CPU, memory, file descriptors), the Python platform, and
``vic_channel_build_info{version,python}``. prometheus_client's ``*_created`` samples
are switched off process-wide on import: they doubled every counter's series and say
nothing a restart's ``process_start_time_seconds`` does not.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from typing import Any

import prometheus_client
import trio
from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from common.ops import inherit
from common.ops.version import version

log = logging.getLogger("vic.ops.metrics_http")  # the name operators know

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# None = ready; otherwise a short reason (fixed words, never wire text)
Readiness = Callable[[], str | None]

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 10.0


def standard_collectors(registry: CollectorRegistry) -> None:
    """Process, platform and build-info collectors on a daemon's own registry."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    info = Gauge(
        "vic_channel_build_info",
        "always 1: the version of vic-channel and of Python this process runs",
        ["version", "python"],
        registry=registry,
    )
    info.labels(version(), platform.python_version()).set(1)


def respond(registry: CollectorRegistry, path: bytes, ready: Readiness | None) -> bytes:
    """The whole HTTP response for a GET of ``path``."""
    status, ctype = "200 OK", "text/plain; charset=utf-8"
    route = path.split(b"?")[0]
    if route == b"/metrics":
        body, ctype = generate_latest(registry), CONTENT_TYPE_LATEST
    elif route == b"/healthz":
        body = b"ok\n"
    elif route == b"/readyz":
        why = ready() if ready is not None else None
        if why is None:
            body = b"ready\n"
        else:
            status, body = "503 Service Unavailable", f"not ready: {why}\n".encode()
    else:
        status, body = "404 Not Found", b"not found\n"
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    ready: Readiness | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``registry`` (and the health checks); task_status.started() gets the bound port."""
    key = f"metrics {host}:{port}"
    listeners = await inherit.open_tcp_listeners(key, port, host)
    bound = listeners[0].socket.getsockname()[1]
    task_status.started(bound)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                buf = b""
                while b"\r\n\r\n" not in buf and len(buf) < MAX_REQUEST_HEAD:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    buf += chunk
                line = buf.split(b"\r\n", 1)[0].split()
                path = line[1] if len(line) >= 2 else b"/"
                await stream.send_all(respond(registry, path, ready))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    await trio.serve_listeners(handle, listeners)
