"""AF_VSOCK ingress: guests connect to the host (CID 2) on a port; the peer CID,
which the hypervisor sets and the guest cannot forge, names the VM through the
configured CID -> VM map. Unknown CIDs are refused unless ``allow-unknown``."""

from __future__ import annotations

import logging
import socket
from typing import Any

import trio

from common.ops import inherit
from relay.config import VsockListener
from relay.ingress import BACKLOG, IngressSink, Origin, accept_loop

log = logging.getLogger("relay.ingress.vsock")

REFUSE_UNKNOWN_CID = "unknown-cid"


def identify(cids: dict[int, str], allow_unknown: bool, cid: int) -> str | None:
    """The VM for a peer CID, or None when the connection must be refused."""
    vm = cids.get(cid)
    if vm is not None:
        return vm
    return f"cid-{cid}" if allow_unknown else None


async def bind_vsock(cid: int, port: int, backlog: int = BACKLOG) -> trio.socket.SocketType:
    key = f"vsock {cid}:{port}"
    handed = inherit.inherit(key)  # from the previous process (relay.handoff)
    if handed is not None:
        sock = trio.socket.from_stdlib_socket(handed)
    else:
        sock = trio.socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            await sock.bind((cid, port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
    inherit.register(key, sock)
    return sock


async def serve(
    cfg: VsockListener, sink: IngressSink, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    sock = await bind_vsock(cfg.bind_cid, cfg.port)
    cids = cfg.cid_map()
    try:
        task_status.started(sock.getsockname())
        log.info(
            "route=%s listening on vsock port %d (%d known CIDs)", cfg.name, cfg.port, len(cids)
        )

        async def on_accept(conn: trio.socket.SocketType, addr: Any) -> None:
            await handle_accepted(cfg, cids, sink, conn, addr)

        await accept_loop(sock, cfg.name, on_accept)
    finally:
        sock.close()


async def handle_accepted(
    cfg: VsockListener,
    cids: dict[int, str],
    sink: IngressSink,
    conn: trio.socket.SocketType,
    addr: tuple[int, int],
) -> None:
    cid, port = addr[0], addr[1]
    peer = f"cid {cid} port {port}"
    vm = identify(cids, cfg.allow_unknown, cid)
    stream = trio.SocketStream(conn)
    if vm is None:
        await sink.refuse(
            stream, Origin(cfg.name, "vsock", "", cfg.label, peer), REFUSE_UNKNOWN_CID
        )
        return
    await sink.dispatch(stream, Origin(cfg.name, "vsock", vm, cfg.label, peer))
