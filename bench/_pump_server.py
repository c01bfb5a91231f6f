"""One-hop relay built on relay.pump, for the relay benchmarks (not a benchmark itself).

    python bench/_pump_server.py --listen tcp:127.0.0.1:0 --target tcp:127.0.0.1:9000
    python bench/_pump_server.py --listen unix:/tmp/in.sock --target unix:/tmp/sink.sock

Accepts connections, connects each to the target and pumps both ways. Prints
``READY <address>`` on stdout once listening. ``--once``: serve one connection,
then exit. ``--copy``: force the copy path (no splice). Each pump runs as the
relay daemon runs it with its default ``[timeouts]`` (``--stall 60``, no idle
timeout), without the daemon's admission and origin header (which would put
extra bytes in front of the measured stream).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relay.pump import PumpCounters, pump


def parse_addr(text: str) -> tuple[str, str | tuple[str, int]]:
    kind, _, rest = text.partition(":")
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        return "tcp", (host, int(port))
    if kind == "unix":
        return "unix", rest
    raise SystemExit(f"bad address {text!r} (tcp:HOST:PORT or unix:PATH)")


async def connect(kind: str, addr: str | tuple[str, int]) -> trio.SocketStream:
    if kind == "tcp":
        assert isinstance(addr, tuple)
        return await trio.open_tcp_stream(*addr)
    assert isinstance(addr, str)
    return await trio.open_unix_socket(addr)


async def main(args: argparse.Namespace) -> None:
    lkind, laddr = parse_addr(args.listen)
    tkind, taddr = parse_addr(args.target)
    sock = trio.socket.socket(socket.AF_INET if lkind == "tcp" else socket.AF_UNIX)
    if lkind == "tcp":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind(laddr)
    sock.listen(128)
    listener = trio.SocketListener(sock)
    name = sock.getsockname()
    shown = f"tcp:{name[0]}:{name[1]}" if lkind == "tcp" else f"unix:{name}"
    print(f"READY {shown}", flush=True)

    async def handle(a: trio.SocketStream) -> None:
        b = await connect(tkind, taddr)
        counters = PumpCounters()
        await pump(
            a,
            b,
            counters=counters,
            splice=not args.copy,
            stall_timeout=args.stall or None,
            idle_timeout=args.idle or None,
        )
        if args.verbose:
            print(f"DONE {counters}", file=sys.stderr, flush=True)

    async with listener, trio.open_nursery() as nursery:
        while True:
            stream = await listener.accept()
            if args.once:
                await handle(stream)
                return
            nursery.start_soon(handle, stream)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--once", action="store_true")
    p.add_argument("--copy", action="store_true")
    p.add_argument("--verbose", action="store_true")
    # the relay daemon's defaults (relay.config, [timeouts] stall / idle)
    p.add_argument("--stall", type=float, default=60.0, help="stall timeout, 0: off")
    p.add_argument("--idle", type=float, default=0.0, help="idle timeout, 0: off")
    parsed = p.parse_args()
    kind, addr = parse_addr(parsed.listen)
    if kind == "unix" and isinstance(addr, str) and os.path.exists(addr):
        os.unlink(addr)
    trio.run(main, parsed)
