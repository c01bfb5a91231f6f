"""The tether's session transports: which channel a sealed session runs over.

``[session] transports`` lists several, preferred first (``["hybrid", "serial"]``: vsock
once the VMM offers it, the serial line until then). ``Transports.connect`` tries them in
that order and returns the first that connects; the tether asks again on every
(re)connect, so a session that ran over the serial line resumes over vsock once the line
breaks and vsock is there (the session layer makes that exactly once). A transport
that connected but never carried the session (a listener with no appliance behind
it) goes to the back for the next attempt, so a working one behind it is tried.

A serial line is not a connection: it is there from boot, nothing on it says where one
sealed channel ends, and reopening the tty flushes what arrived meanwhile (pyserial's
open does; an appliance's handshake lands in that gap). So the tether keeps a line open
across sealed connections (``is_line``) and starts the next channel on it, until the
line itself breaks or a preferred transport connects (``preferred``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

from guestagent.channels import Channel, Connector, SerialChannel


@dataclass(frozen=True)
class SessionTransport:
    """One way to the appliance: its kind (``hybrid``, ``serial``...) and connector."""

    kind: str
    connect: Connector


class NoTransport(OSError):
    """No transport connected; the message names each one's failure."""


class Transports:
    """An ordered list of transports, preferred first. A connect that takes longer than
    ``connect_timeout`` counts as failed (a TCP peer that drops SYNs must not keep the
    tether off a line that works)."""

    def __init__(
        self, transports: Sequence[SessionTransport], *, connect_timeout: float = 5.0
    ) -> None:
        if not transports:
            raise ValueError("no session transport")
        self.transports = tuple(transports)
        self.connect_timeout = connect_timeout

    @classmethod
    def one(cls, connector: Connector, kind: str = "") -> Transports:
        return cls([SessionTransport(kind, connector)])

    async def connect(self, start: int = 0) -> tuple[int, Channel]:
        """The first transport that connects, in order of preference from ``start`` on
        (then those before it): (its index, the channel). Raises ``NoTransport`` when
        none does."""
        order = [*range(start, len(self.transports)), *range(start)]
        index, channel, errors = await self._first(order)
        if channel is None:
            raise NoTransport("; ".join(errors))
        return index, channel

    async def preferred(self, than: int) -> tuple[int, Channel] | None:
        """A transport preferred over transport ``than`` that connects now, if any."""
        index, channel, _errors = await self._first(range(than))
        return None if channel is None else (index, channel)

    async def _first(self, order: Iterable[int]) -> tuple[int, Channel | None, list[str]]:
        errors: list[str] = []
        for i in order:
            t = self.transports[i]
            try:
                with trio.fail_after(self.connect_timeout):
                    return i, await t.connect(), errors
            except trio.TooSlowError:
                errors.append(f"{t.kind or 'connect'}: no connection in {self.connect_timeout}s")
            except OSError as e:
                errors.append(f"{t.kind}: {e}" if t.kind and len(self.transports) > 1 else str(e))
        return -1, None, errors


def is_line(channel: Channel) -> bool:
    """A serial line: kept open across sealed connections."""
    return isinstance(channel, SerialChannel)
