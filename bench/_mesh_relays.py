"""The relay roles of bench/mesh_two_hop.py (``--role ingress|egress``), one process each.

The egress relay ends the peer link (TLS or plain) and delivers each stream to
the sink; the ingress relay accepts the clients and opens a stream per client
over its link to the egress (and, with ``--kill-every``, kills that link now and then).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

import trio
from _common import raise_nofile

from common.link.config import LinkTuning
from common.link.peering import LinkServer, open_session_table
from common.link.peerlink import LinkConfig
from common.link.route import Route, Router
from common.link.tls import TlsFiles
from common.ops import runtime_tuning
from relay.pump import pump


def link_config() -> LinkConfig:
    """The link a relay with ``[peer.link] frame-kib = N`` runs (N from
    $VIC_MESH_FRAME_KB, 1024 by default), reconnecting at once after a kill."""
    frame_kib = int(os.environ.get("VIC_MESH_FRAME_KB", "1024"))
    shipped = LinkTuning(frame_kib=frame_kib).link_config()
    return dataclasses.replace(shipped, reconnect_min=0.01, reconnect_max=0.2)


def tls_files(certs: Path | None, name: str) -> TlsFiles | None:
    if certs is None:
        return None
    return TlsFiles(certs / f"host-{name}.crt", certs / f"host-{name}.key", certs / "ca.crt")


async def egress(args: argparse.Namespace, cfg: LinkConfig, certs: Path | None) -> None:
    sink_host, sink_port = args.sink.rsplit(":", 1)
    async with open_session_table(cfg) as table, trio.open_nursery() as n:
        server = LinkServer(
            table,
            tls_files=tls_files(certs, "egress"),
            allowed_peers={"vic://host/ingress"},
            config=cfg,
        )
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await n.start(server.serve, listeners)
        print(f"READY {listeners[0].socket.getsockname()[1]}", flush=True)

        async def deliver(st: Any) -> None:
            out = await trio.open_tcp_stream(sink_host, int(sink_port))
            await pump(st, out)

        async for acc in table:
            n.start_soon(deliver, acc.stream)


async def ingress(args: argparse.Namespace, cfg: LinkConfig, certs: Path | None) -> None:
    async with trio.open_nursery() as n:
        route = Route(
            f"tcp:127.0.0.1:{args.link_port}",
            identity="vic://host/egress",
            tls=certs is not None,
        )
        router = Router(route, n, tls_files=tls_files(certs, "ingress"), config=cfg)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=4096)

        async def handle(client: Any) -> None:
            st = await router.open_stream(b"bench")
            await pump(client, st)

        await n.start(trio.serve_listeners, handle, listeners)
        if args.kill_every:
            n.start_soon(_killer, router, args.kill_every)
        print(f"READY {listeners[0].socket.getsockname()[1]}", flush=True)


async def _killer(router: Router, every: float) -> None:
    while True:
        await trio.sleep(every)
        link = router.link
        if link is not None and link.stream_count:
            link.close("bench: killed")
            print("KILLED", flush=True)


def role_main(args: argparse.Namespace) -> None:
    raise_nofile()
    runtime_tuning.tune_allocator()  # as `vic relay` does at start-up
    cfg = link_config()
    certs = Path(args.certs) if args.certs else None
    role = egress if args.role == "egress" else ingress
    prof_dir = os.environ.get("VIC_MESH_PROFILE")
    if not prof_dir:
        trio.run(role, args, cfg, certs)
        return
    import cProfile

    pr = cProfile.Profile()
    pr.enable()
    try:
        trio.run(role, args, cfg, certs)
    except KeyboardInterrupt:
        pass
    finally:
        pr.disable()
        pr.dump_stats(f"{prof_dir}/{args.role}-{os.getpid()}.prof")
