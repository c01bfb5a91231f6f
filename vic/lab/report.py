"""What the lab checks and prints: per console, bytes sent vs bytes received."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass
class ConsoleCheck:
    name: str
    path: str  # how the bytes travelled, e.g. "esx-a -> vSPC" or "pipe -> relay-a -> endpoint"
    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    typed: bytearray = field(default_factory=bytearray)  # appliance -> VM
    typed_seen: bytearray = field(default_factory=bytearray)
    events: list[str] = field(default_factory=list)
    skipped: str = ""  # why this path could not run here

    @property
    def ok(self) -> bool:
        return bytes(self.sent) == bytes(self.received) and bytes(self.typed) == bytes(
            self.typed_seen
        )

    def verdict(self) -> str:
        if self.skipped:
            return f"SKIPPED: {self.skipped}"
        if self.ok:
            return "OK: every byte once, in order"
        if len(self.received) < len(self.sent) and self.sent.startswith(self.received):
            return f"MISSING {len(self.sent) - len(self.received)} trailing bytes"
        if len(self.received) > len(self.sent):
            return f"EXTRA {len(self.received) - len(self.sent)} bytes"
        for i, (a, b) in enumerate(zip(self.sent, self.received, strict=False)):
            if a != b:
                return f"DIFFERS at byte {i}"
        if self.typed != self.typed_seen:
            return "VM input differs"
        return "DIFFERS"


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def render(title: str, checks: list[ConsoleCheck]) -> str:
    lines = [f"== {title}"]
    w = max([len(c.name) for c in checks] + [4])
    p = max([len(c.path) for c in checks] + [4])
    lines.append(f"{'VM':<{w}}  {'path':<{p}}  {'sent':>9}  {'received':>9}  {'to VM':>6}  result")
    for c in checks:
        lines.append(
            f"{c.name:<{w}}  {c.path:<{p}}  {len(c.sent):>9}  {len(c.received):>9}  "
            f"{len(c.typed_seen):>3}/{len(c.typed):<3} {c.verdict()}"
        )
        for e in c.events:
            lines.append(f"{'':<{w}}    - {e}")
    return "\n".join(lines)
