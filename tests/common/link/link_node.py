"""A peer-link node for multi-host tests: run inside a network namespace.

    python -m tests.common.link.link_node serve --listen HOST:PORT --certs DIR --name B --allow A
    python -m tests.common.link.link_node send --address tcp:HOST:PORT --certs DIR \
        --name A --peer B --mb N

``serve`` echoes every accepted stream. ``send`` streams N MiB and reads the echo;
after half it prints ``half`` and waits for a line on stdin; it prints
``link-dead`` whenever its link dies, and finally one JSON line with the digests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

import trio

from common.link.peering import LinkServer, open_session_table
from common.link.peerlink import LinkConfig
from common.link.resumable import ResumableStream
from common.link.route import Route, Router
from common.link.tls import TlsFiles
from common.proto.link.mux import MuxConfig
from tests.support.waiting import wait_until

CFG = LinkConfig(
    mux=MuxConfig(ping_interval=0.5, dead_after=3.0),
    replay_limit=1 << 20,
    reconnect_min=0.05,
    reconnect_max=0.3,
)


def files(d: Path, name: str) -> TlsFiles:
    return TlsFiles(d / f"host-{name}.crt", d / f"host-{name}.key", d / "ca.crt")


async def serve(args: argparse.Namespace) -> None:
    host, port = args.listen.rsplit(":", 1)
    async with open_session_table(CFG) as table, trio.open_nursery() as n:
        server = LinkServer(
            table,
            tls_files=files(args.certs, args.name),
            allowed_peers={f"vic://host/{args.allow}"},
            config=CFG,
        )
        listeners = await trio.open_tcp_listeners(int(port), host=host)
        await n.start(server.serve, listeners)
        print("ready", flush=True)

        async def echo(st: ResumableStream) -> None:
            while d := await st.receive_some():
                await st.send_all(d)
            await st.send_eof()
            await st.aclose()

        async for acc in table:
            n.start_soon(echo, acc.stream)


async def send(args: argparse.Namespace) -> None:
    total = args.mb << 20
    chunk = 256 * 1024
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    async with trio.open_nursery() as n:
        router = Router(
            Route(args.address, identity=f"vic://host/{args.peer}"),
            n,
            tls_files=files(args.certs, args.name),
            config=CFG,
        )
        st = await router.open_stream(b"netns")
        sent_h, back_h = hashlib.sha256(), hashlib.sha256()
        back = 0

        async def watch() -> None:
            seen = None
            while True:  # each new link, until it dies (no deadline: runs for the test)

                def new_link(old: object = seen) -> bool:
                    return router.link is not None and router.link is not old

                await wait_until(new_link, None, interval=0.02)
                seen = router.link
                assert seen is not None
                await seen.closed.wait()
                print("link-dead", flush=True)

        async def sender() -> None:
            for i, off in enumerate(range(0, total, chunk)):
                if off == total // 2:
                    print("half", flush=True)
                    await stdin.receive_some(100)
                block = random.Random(i).randbytes(chunk)
                sent_h.update(block)
                await st.send_all(block)
            await st.send_eof()

        n.start_soon(watch)
        n.start_soon(sender)
        while d := await st.receive_some():
            back_h.update(d)
            back += len(d)
        print(
            json.dumps(
                {
                    "sent": sent_h.hexdigest(),
                    "back": back_h.hexdigest(),
                    "bytes": back,
                    "links": router.links_opened,
                }
            ),
            flush=True,
        )
        n.cancel_scope.cancel()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["serve", "send"])
    p.add_argument("--listen")
    p.add_argument("--address")
    p.add_argument("--certs", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--allow")
    p.add_argument("--peer")
    p.add_argument("--mb", type=int, default=16)
    args = p.parse_args()
    trio.run(serve if args.mode == "serve" else send, args)


if __name__ == "__main__":
    main()
