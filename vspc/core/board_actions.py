"""What the switchboard says: the actions its calls return, and the words they use.

The adapter carries these out in order (see ``vspc.core.switchboard``). Besides the
writes, closes and deliveries, the switchboard states its decisions explicitly:
``VMotionSettled`` (a vMotion ended: complete, aborted or expired), ``PeerRefused``
(a VMOTION-PEER was refused, and whether its sender must be closed for it),
``IdentityDeferred`` / ``IdentityReady`` (a connection named a VM whose vMotion is
pending without naming its port: it waits for VMOTION-PEER, or for the vMotion to
settle) and ``PortClaimed`` (a connection names the port it carries).
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TypeAlias

from common.proto.vmotion import State
from vspc.core.identity import PortKey

Conn = Hashable


class EventKind(enum.StrEnum):
    CONNECT = "connect"
    IDENTITY = "identity"
    IDENTITY_CONFLICT = "identity_conflict"
    TAKEOVER = "takeover"
    TAKEOVER_PROBE = "takeover_probe"
    TAKEOVER_REFUSED = "takeover_refused"
    VMOTION_BEGIN = "vmotion_begin"
    VMOTION_NOTNOW = "vmotion_notnow"
    VMOTION_PEER = "vmotion_peer"
    PEER_REFUSED = "peer_refused"
    VMOTION_COMPLETE = "vmotion_complete"
    COMPLETE_REFUSED = "complete_refused"
    VMOTION_ABORT = "vmotion_abort"
    ABORT_IGNORED = "abort_ignored"
    VMOTION_EXPIRE = "vmotion_expire"
    SOURCE_CLOSED = "vmotion_source_closed"
    DEST_CLOSED = "vmotion_dest_closed"
    DRAIN_TIMEOUT = "drain_timeout"
    DISCONNECT = "disconnect"


# ---- actions


@dataclass(frozen=True, slots=True)
class SendData:
    """Write console bytes to the VM over ``conn`` (Telnet-encode them)."""

    conn: Conn
    data: bytes


@dataclass(frozen=True, slots=True)
class SendGoahead:
    conn: Conn
    seq: bytes
    secret: bytes


@dataclass(frozen=True, slots=True)
class SendNotNow:
    conn: Conn
    seq: bytes


@dataclass(frozen=True, slots=True)
class SendPeerOk:
    conn: Conn
    seq: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """Console bytes from the VM, for the port's console, in order."""

    key: PortKey
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseConn:
    """Close ``conn``; call ``connection_closed(conn)`` once it is closed."""

    conn: Conn
    reason: str


@dataclass(frozen=True, slots=True)
class PortEvent:
    """Something to log / put in the console's event log (``key`` None: no port yet)."""

    key: PortKey | None
    kind: EventKind
    detail: str
    conn: Conn | None = None


@dataclass(frozen=True, slots=True)
class RoomAvailable:
    """The to-VM buffer of ``key`` was full and has drained."""

    key: PortKey


@dataclass(frozen=True, slots=True)
class ResumeReading:
    """Held bytes of ``conn`` were full and have been delivered: read it again."""

    conn: Conn


@dataclass(frozen=True, slots=True)
class Dropped:
    """Bytes from a connection that closed before it had any identity (nowhere to go)."""

    conn: Conn
    data: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class ProbeConn:
    """Ask ``conn`` for proof of life (a takeover from another source is waiting)."""

    conn: Conn


class Outcome(enum.StrEnum):
    """How a vMotion settled (``vspc_vmotions_total{outcome}``)."""

    COMPLETE = "complete"
    ABORT = "abort"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class VMotionSettled:
    """The pending vMotion of ``key`` ended (the port is back to one carrier)."""

    key: PortKey
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class PeerRefused:
    """A VMOTION-PEER from ``conn`` was refused; ``close``: close ``conn`` for it (a
    carrier that sent a confused PEER is not closed: its VM stays connected)."""

    conn: Conn
    close: bool


@dataclass(frozen=True, slots=True)
class PortClaimed:
    """``conn`` names the port ``key`` it carries (the outcome follows as usual)."""

    conn: Conn
    key: PortKey


@dataclass(frozen=True, slots=True)
class IdentityDeferred:
    """``conn`` named VM ``uuid`` but no port label while a vMotion of that VM is
    pending: it is most likely the destination; VMOTION-PEER will bind it by cookie."""

    conn: Conn
    uuid: str


@dataclass(frozen=True, slots=True)
class IdentityReady:
    """The vMotion a deferred ``conn`` waited for settled without it: unless ``conn``
    is closing, call ``claim(conn, key, now)`` (a plain VM connection now)."""

    conn: Conn
    key: PortKey


Action: TypeAlias = (
    SendData
    | SendGoahead
    | SendNotNow
    | SendPeerOk
    | Deliver
    | CloseConn
    | PortEvent
    | RoomAvailable
    | ResumeReading
    | Dropped
    | ProbeConn
    | VMotionSettled
    | PeerRefused
    | PortClaimed
    | IdentityDeferred
    | IdentityReady
)


class BufferFull(Exception):
    """``to_vm`` was given more bytes than ``to_vm_room`` allowed."""

    def __init__(self, key: PortKey, room: int, size: int) -> None:
        super().__init__(f"{key}: {size} bytes offered, room for {room}")
        self.key, self.room, self.size = key, room, size


@dataclass(frozen=True, slots=True)
class VMotionInfo:
    key: PortKey
    state: State
    seq: bytes
    source: Conn | None
    dest: Conn | None
    started: float
    deadline: float
