"""What a pump (relay.pump) knows: its counters, its two directions, how it ends."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

import trio

A_TO_B = "a_to_b"
B_TO_A = "b_to_a"


@dataclass(slots=True)
class PumpCounters:
    """Live counters, updated as bytes are delivered to the destination."""

    a_to_b: int = 0
    b_to_a: int = 0
    # At least one direction runs on the fd fast path (both ends fd-backed raw
    # streams): bulk bytes spliced zero-copy, small bursts read/written directly
    # on the fds. False: the userspace copy fallback (TLS, in-memory streams).
    spliced: bool = False
    on_bytes: Callable[[str, int], None] | None = field(default=None, repr=False)
    end_reason: str = ""  # "eof", "idle timeout", "write stall ...", "reset ...: <error>"

    def add(self, direction: str, n: int) -> None:
        if direction == A_TO_B:
            self.a_to_b += n
        else:
            self.b_to_a += n
        if self.on_bytes is not None:
            self.on_bytes(direction, n)


class PumpTimeout(TimeoutError):
    """The pump stopped because of a timeout (both streams are closed)."""


class IdleTimeout(PumpTimeout):
    pass


class StallTimeout(PumpTimeout):
    pass


class Abort(Exception):
    """Internal: a direction failed; carries the reason."""


class Mode(IntEnum):
    """How a direction moves its bytes."""

    NOT_STARTED = 0
    FAST = 1  # the fd fast path (common.io.splice)
    COPY = 2  # the userspace copy loop (relay.pump_copy)


class Direction:
    """One direction of a pump: ``src`` -> ``dst``; ``index`` is its number in
    relay.park's routes and hand-offs (0: a to b, 1: b to a)."""

    __slots__ = ("done", "dst", "index", "mode", "moved", "name", "src")

    def __init__(
        self,
        index: int,
        src: trio.abc.Stream,
        dst: trio.abc.Stream,
        count: Callable[[str, int], None],
    ) -> None:
        self.index = index
        self.name = (A_TO_B, B_TO_A)[index]
        self.src = src
        self.dst = dst
        self.mode = Mode.NOT_STARTED
        self.done = False  # reached EOF, every byte delivered
        # counts delivered bytes (once per burst or message, not per chunk)
        self.moved: Callable[[int], None] = functools.partial(count, self.name)
