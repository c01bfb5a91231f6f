"""Network serial port as raw TCP: server mode (ESX connects in) or client mode
(ESX listens, the relay connects out and reconnects when the VM end comes back)."""

from __future__ import annotations

import logging
from typing import Any

import trio

from common.ops import inherit
from relay.config import TcpListener
from relay.ingress import IngressSink, Origin, accept_loop, describe, wait_done

log = logging.getLogger("relay.ingress.tcp")


async def serve(
    cfg: TcpListener, sink: IngressSink, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    if cfg.mode == "server":
        await serve_tcp_listener(
            cfg.host, cfg.port, cfg.name, "tcp", cfg.vm, cfg.label, sink, task_status=task_status
        )
    else:
        await _client(cfg, sink, task_status=task_status)


async def serve_tcp_listener(
    host: str,
    port: int,
    route: str,
    kind: str,
    vm: str,
    label: str,
    sink: IngressSink,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Shared by the raw TCP server and the vSPC pass-through (vm "" = unknown)."""
    key = f"tcp {host}:{port}"
    listeners = await inherit.open_tcp_listeners(key, port, host)
    try:
        bound = listeners[0].socket.getsockname()
        task_status.started(bound)
        log.info("route=%s kind=%s listening on %s", route, kind, describe(bound))

        async def on_accept(conn: trio.socket.SocketType, addr: Any) -> None:
            peer = describe(addr)
            await sink.dispatch(trio.SocketStream(conn), Origin(route, kind, vm, label, peer))

        async with trio.open_nursery() as n:
            for lst in listeners:
                n.start_soon(accept_loop, lst.socket, route, on_accept)
    finally:
        inherit.forget(key, listeners)
        for lst in listeners:
            lst.socket.close()


async def _client(cfg: TcpListener, sink: IngressSink, *, task_status: Any) -> None:
    backoff = sink.backoff()
    task_status.started((cfg.host, cfg.port))
    where = describe((cfg.host, cfg.port))
    failing = False
    while True:
        try:
            stream = await trio.open_tcp_stream(cfg.host, cfg.port)
        except OSError as e:
            delay = backoff.next_delay()
            # a connect failure: WARNING the first time, DEBUG while it keeps failing
            log.log(
                logging.DEBUG if failing else logging.WARNING,
                "route=%s vm=%s connect to %s failed (%s); retry in %.1fs",
                cfg.name,
                cfg.vm,
                where,
                e,
                delay,
            )
            failing = True
            await trio.sleep(delay)
            continue
        failing = False
        backoff.reset()
        log.info("route=%s vm=%s connected to %s", cfg.name, cfg.vm, where)
        done = await sink.dispatch(
            stream, Origin(cfg.name, "tcp", cfg.vm, cfg.label, where), track=True
        )
        if done is None:
            await backoff.sleep()
        else:
            await wait_done(done)
