"""Helpers for the switchboard tests: a small board, a carried port, a pending vMotion."""

from __future__ import annotations

from typing import TypeVar

from vspc.core.identity import PortKey
from vspc.core.switchboard import (
    Action,
    PortEvent,
    Switchboard,
)

A = TypeVar("A")

K = PortKey("501d2a", "serial0")
K2 = PortKey("501d2b", "serial0")
SEQ = b"\xff\x01\xff"
SECRET = b"\xff\xffsecret\xff"
COOKIE = SEQ + SECRET
LIMIT = 16
TIMEOUT = 5.0


def sb(**kw: float) -> Switchboard:
    args: dict[str, float] = {
        "vmotion_timeout": TIMEOUT,
        "max_concurrent_vmotions": 8,
        "to_vm_buffer_limit": LIMIT,
    }
    args.update(kw)
    return Switchboard(
        vmotion_timeout=args["vmotion_timeout"],
        max_concurrent_vmotions=int(args["max_concurrent_vmotions"]),
        to_vm_buffer_limit=int(args["to_vm_buffer_limit"]),
    )


def kinds(actions: list[Action]) -> list[str]:
    return [a.kind for a in actions if isinstance(a, PortEvent)]


def only(actions: list[Action], cls: type[A]) -> list[A]:
    return [a for a in actions if isinstance(a, cls)]


def carried(s: Switchboard, conn: str = "src", key: PortKey = K) -> Switchboard:
    s.connection_opened(conn)
    s.identified(conn, key, 0.0)
    return s


def pending(s: Switchboard, now: float = 0.0) -> list[Action]:
    carried(s)
    return s.begin("src", SEQ, SECRET, now)


def peered(s: Switchboard) -> list[Action]:
    pending(s)
    s.connection_opened("dst")
    return s.peer("dst", COOKIE, 0.0)
