"""What ``vic console list`` shows of a console (the LIST reply's objects).

Fields added here are extra keys in the reply: an older client ignores them, and
a newer client reading an older service finds them missing (``-`` in its table).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.ops.logs import iso_utc
from vspc.core.identity import PortKey


@dataclass(frozen=True)
class Attached:
    """A client attached to a console: who (``host:port``, ``unix uid=U pid=P`` or
    its certificate's identity) and how (rw, ro, exclusive)."""

    peer: str
    mode: str


@dataclass(frozen=True)
class ConsoleInfo:
    key: PortKey
    display: str
    connected: bool
    bytes: int  # from the VM, since the service started
    clients: int
    bytes_to_vm: int = 0
    logged: int | None = None  # bytes in its log files (consoles known only from disk)
    origin: str = ""  # where its newest VM connection comes from (ESX host or relay host)
    last_seen: float | None = None  # wall-clock time its VM was last connected
    attached: tuple[Attached, ...] = ()

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "uuid": self.key.uuid,
            "label": self.key.label,
            "display": self.display,
            "connected": self.connected,
            "bytes": self.bytes,
            "bytes_to_vm": self.bytes_to_vm,
            "clients": self.clients,
            "origin": self.origin,
            "last_seen": None if self.last_seen is None else iso_utc(self.last_seen),
            "attached": [{"peer": a.peer, "mode": a.mode} for a in self.attached],
        }
        if self.logged is not None:
            out["logged"] = self.logged
        return out
