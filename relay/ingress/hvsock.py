"""Hybrid vsock, guest-initiated (Firecracker / Cloud Hypervisor): when the guest
connects to host port P, the VMM connects to the Unix socket ``<uds_path>_P`` and
the stream is raw from the first byte. The socket path is per VM, so it is the
identity: the relay listens there on behalf of one configured VM."""

from __future__ import annotations

import logging
from typing import Any

import trio

from common.io.unixlisten import open_unix_listener
from relay.config import HvsockListener
from relay.ingress import BACKLOG, IngressSink, Origin, accept_loop

log = logging.getLogger("relay.ingress.hvsock")


async def serve(
    cfg: HvsockListener, sink: IngressSink, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    path = cfg.socket_path
    listener = await open_unix_listener(path, mode=0o660, backlog=BACKLOG)
    try:
        task_status.started(str(path))
        log.info("route=%s vm=%s listening on %s (guest port %d)", cfg.name, cfg.vm, path, cfg.port)
        origin = Origin(cfg.name, "hvsock", cfg.vm, cfg.label or f"vsock-{cfg.port}", str(path))

        async def on_accept(conn: trio.socket.SocketType, addr: Any) -> None:
            await sink.dispatch(trio.SocketStream(conn), origin)

        await accept_loop(listener.socket, cfg.name, on_accept)
    finally:
        listener.close()
