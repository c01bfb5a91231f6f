"""The floor of any splice relay on this kernel (relay_throughput's "splice-floor").

    python bench/_splice_floor.py --listen tcp:127.0.0.1:0 --target tcp:127.0.0.1:9000

Serves one connection with no event loop and no per-chunk Python work beyond
the call itself: each direction is one OS thread looping over *blocking*
``splice(2)`` calls, socket -> pipe -> socket, with a 1 MiB pipe (as the pump's
pool makes them). It is not a relay anyone should run (no timeouts, no
counters, no admission, a thread per direction); it shows what the kernel's
zero-copy path costs by itself, so that the pump's figures can be read against
it: whatever a relay in Python adds comes on top of this.

Its reads block in the kernel; the pump's bulk thread reads that way too
while the pump's other direction waits (relay.pump_blocking): made to poll
non-blocking sockets instead, this floor ran at 0.72x its own throughput on
Unix sockets (1.02x on TCP; 9 paired rounds of 1 GiB). It leaves the target's
SO_SNDBUF at the default where the pump raises a Unix destination's to 1 MiB:
with that raise this floor measured 1.00x throughput at 1.06x CPU per GiB
(9 paired rounds, load 4.6), no advantage either way.

The forward direction (client -> target) runs on the main thread and the main
thread lives until the target side closes too, so that the harness, which reads
CPU time per live thread, counts all of the forward work. Prints ``READY
<address>`` once listening (like bench/_pump_server.py).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import threading

from _pump_server import parse_addr
from _relay_benchlib import connect

PIPE_SIZE = 1 << 20


def _open_listener(kind: str, addr: str | tuple[str, int]) -> tuple[socket.socket, str]:
    if kind == "tcp":
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(addr)
        host, port = ls.getsockname()[:2]
        shown = f"tcp:{host}:{port}"
    else:
        assert isinstance(addr, str)
        ls = socket.socket(socket.AF_UNIX)
        ls.bind(addr)
        shown = f"unix:{addr}"
    ls.listen(1)
    return ls, shown


def splice_loop(src: socket.socket, dst: socket.socket) -> None:
    """src -> dst until src's EOF, then half-close dst (blocking calls only)."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        while True:
            try:
                n = os.splice(src.fileno(), w, PIPE_SIZE, flags=os.SPLICE_F_MOVE)
            except OSError:
                break
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n, flags=os.SPLICE_F_MOVE)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    finally:
        os.close(r)
        os.close(w)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True)
    p.add_argument("--target", required=True)
    args = p.parse_args()
    lkind, laddr = parse_addr(args.listen)
    ls, shown = _open_listener(lkind, laddr)
    print(f"READY {shown}", flush=True)
    client, _ = ls.accept()
    ls.close()
    target = connect(args.target)
    back = threading.Thread(target=splice_loop, args=(target, client), daemon=True)
    back.start()
    splice_loop(client, target)
    back.join()
    client.close()
    target.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
