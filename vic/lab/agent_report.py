"""What the appliance saw of each agent VM in lab scenario 3, and the table of it."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.proto import guestinfo as gi
from vic.lab.report import ConsoleCheck


@dataclass
class AgentCheck:
    """What the appliance saw of one agent VM, and whether it was what it asked for."""

    vm: str
    channel: str
    expected: bytes = b""
    console: bytearray = field(default_factory=bytearray)
    address: str = "-"
    state: str = "-"
    status: str = "-"
    at_status: int | None = None
    problems: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.problems and bytes(self.console) == self.expected

    def console_verdict(self) -> str:
        c = ConsoleCheck(
            self.vm, self.channel, sent=bytearray(self.expected), received=bytearray(self.console)
        )
        return "" if c.ok else c.verdict()

    def verdict(self) -> str:
        if self.skipped:
            return f"SKIPPED: {self.skipped}"
        why = list(self.problems)
        if cv := self.console_verdict():
            why.append(f"console {cv}")
        return "OK" if not why else "FAILED: " + "; ".join(why)


def fmt_addresses(nets: dict[str, list[gi.IPAddress]]) -> str:
    if not nets:
        return "(none published)"
    return "; ".join(
        f"{net} {','.join(str(a) for a in addrs)}" for net, addrs in sorted(nets.items())
    )


def render(title: str, checks: list[AgentCheck]) -> str:
    rows = [
        ("VM", "channel", "address (guestinfo)", "state (started)", "exit", "console", "result")
    ]
    for c in checks:
        cons = f"{len(c.console)}/{len(c.expected)}"
        if c.at_status is not None:
            cons += f" ({c.at_status} when status seen)"
        rows.append(
            (
                c.vm,
                c.channel,
                c.address,
                c.state,
                c.status,
                cons if not c.skipped else "-",
                c.verdict(),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"== {title}"]
    for i, r in enumerate(rows):
        lines.append("  ".join(f"{v:<{w}}" for v, w in zip(r, widths, strict=False)) + "  " + r[-1])
        if i:
            lines.extend(f"    - {e}" for e in checks[i - 1].events)
    return "\n".join(lines)
