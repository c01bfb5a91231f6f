"""systemd sd_notify: READY / RELOADING / STOPPING / WATCHDOG over $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time


def notify(*states: str) -> bool:
    """Send states such as ``READY=1`` to $NOTIFY_SOCKET; False when unset."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    msg = "\n".join(states).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(msg, path)
        except OSError:
            return False
    return True


def ready() -> bool:
    return notify("READY=1")


def reloading() -> bool:
    # systemd wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload).
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Half of $WATCHDOG_USEC in seconds, or None when no watchdog is configured."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
