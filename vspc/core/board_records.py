"""The switchboard's records: one per connection, one per port.

Internal to the switchboard (``vspc.core.switchboard``): a connection's role at its
port, the bytes held for it, and a port's carrier, drains, waiting connections,
contenders and to-VM buffer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from common.proto.vmotion import PortVMotion, State
from vspc.core.board_actions import Conn
from vspc.core.identity import PortKey


class Role(enum.Enum):
    UNBOUND = "unbound"  # no identity yet
    CARRIER = "carrier"  # carries its port
    DRAIN = "drain"  # a former carrier, still open: its bytes come first
    WAITING = "waiting"  # bound to a port with a pending vMotion, not (yet) the carrier
    OUTCAST = "outcast"  # a destination/candidate that lost; being closed
    CONTENDER = "contender"  # claims a carried port from another source: waits for a probe


# Thousands of ports and connections are live at once, most of them with nothing
# held, draining or waiting: their empty lists and buffers are these shared,
# never-mutated objects until first used (``added``, ``grown``).
NO_RECS: list[ConnRec] = []
NO_BYTES = bytearray()


def _no_recs() -> list[ConnRec]:
    return NO_RECS


def _no_bytes() -> bytearray:
    return NO_BYTES


def added(recs: list[ConnRec], rec: ConnRec) -> list[ConnRec]:
    """``recs`` with ``rec`` appended (a new list in place of the shared empty one)."""
    if recs is NO_RECS:
        return [rec]
    recs.append(rec)
    return recs


def grown(buf: bytearray, data: bytes) -> bytearray:
    """``buf`` with ``data`` appended (a new buffer in place of the shared empty one)."""
    if buf is NO_BYTES:
        return bytearray(data)
    buf += data
    return buf


@dataclass(slots=True, eq=False)
class ConnRec:
    conn: Conn
    source: object = None  # the peer's address: takeovers from the same one are ESX reconnecting
    key: PortKey | None = None
    role: Role = Role.UNBOUND
    held: bytearray = field(default_factory=_no_bytes)
    paused: bool = False  # from_vm_room hit 0: owes a ResumeReading
    closed: bool = False  # gone; kept only as a placeholder in a port's drain order
    close_sent: bool = False
    drain_deadline: float | None = None


@dataclass(slots=True, eq=False)
class PortRec:
    key: PortKey
    vm: PortVMotion = field(default_factory=PortVMotion)
    carrier: ConnRec | None = None
    drains: list[ConnRec] = field(default_factory=_no_recs)  # oldest first; head delivers
    waiting: list[ConnRec] = field(default_factory=_no_recs)
    outcasts: list[ConnRec] = field(default_factory=_no_recs)
    contenders: list[ConnRec] = field(default_factory=_no_recs)  # oldest first
    vm_source: object = None  # source address of the pending vMotion's BEGIN
    to_vm_buf: bytearray = field(default_factory=_no_bytes)
    to_vm_full: bool = False  # owes a RoomAvailable

    def head(self) -> ConnRec | None:
        """The connection whose bytes are delivered now (others of the port wait)."""
        return self.drains[0] if self.drains else self.carrier

    def empty(self) -> bool:
        return (
            self.carrier is None
            and not self.drains
            and not self.waiting
            and not self.outcasts
            and not self.contenders
            and self.vm.state is State.IDLE
            and not self.to_vm_buf
        )
