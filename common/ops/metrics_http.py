"""A tiny trio HTTP server that exposes a Prometheus registry at /metrics."""

from __future__ import annotations

import logging
from typing import Any

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from common.ops import inherit

log = logging.getLogger("vic.ops.metrics_http")  # the name operators know


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``registry``; task_status.started() gets the bound port."""
    key = f"metrics {host}:{port}"
    listeners = await inherit.open_tcp_listeners(key, port, host)
    bound = listeners[0].socket.getsockname()[1]
    task_status.started(bound)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(10):
                buf = b""
                while b"\r\n\r\n" not in buf and len(buf) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    buf += chunk
                line = buf.split(b"\r\n", 1)[0].split()
                path = line[1] if len(line) >= 2 else b"/"
                if path.split(b"?")[0] == b"/metrics":
                    body = generate_latest(registry)
                    head = f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
                else:
                    body = b"not found\n"
                    head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                await stream.send_all(head.encode() + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    await trio.serve_listeners(handle, listeners)
