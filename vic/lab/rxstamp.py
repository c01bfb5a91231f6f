"""Kernel receive timestamps on a TCP socket (SO_TIMESTAMPNS), for measuring.

A simulated ESX host shares this machine's CPUs with the server it measures,
unlike a real one. When it times a reply by the moment its own task reads it,
its own wake-up and event loop count as the server's latency. The kernel stamps
each segment as it arrives (CLOCK_REALTIME, ns); ``recv_stamped`` returns that
stamp with the bytes, so a measurement can end where the reply reached this
host rather than where this process got round to it.
"""

from __future__ import annotations

import socket
import struct

import trio

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS is the same
_TIMESPEC = struct.Struct("qq")


def enable(sock: trio.socket.SocketType) -> bool:
    """Ask the kernel to stamp what arrives on ``sock``; False where it cannot."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


async def recv_stamped(sock: trio.socket.SocketType, n: int) -> tuple[bytes, int | None]:
    """Up to ``n`` bytes and the kernel's arrival time of the last of them
    (ns since the epoch; None without a stamp)."""
    data, ancillary, _flags, _addr = await sock.recvmsg(n, socket.CMSG_SPACE(_TIMESPEC.size))
    stamp = None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(payload)
            stamp = sec * 1_000_000_000 + nsec
    return data, stamp
