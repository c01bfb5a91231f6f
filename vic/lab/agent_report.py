"""What the appliance saw of each agent VM in lab scenario 3, and the table of it."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.proto import guestinfo as gi
from vic.lab import report
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
    """The table: one row per VM (its exit status, console bytes received of those sent, and
    how many had arrived when the appliance saw the exit status), then notes: what guestinfo
    said (address, ``started``) and what happened."""
    rows = [("VM", "channel", "exit", "console", "at status", "result")]
    for c in checks:
        cons = "-" if c.skipped else f"{len(c.console)}/{len(c.expected)}"
        at = "-" if c.at_status is None else str(c.at_status)
        rows.append((c.vm, c.channel, c.status, cons, at, c.verdict()))
    laid = report.columns(rows, wrapped={1, 5}, right={4})
    lines = report.paragraph(f"== {title}", indent=3) + laid[0]
    indent = max(len(r[0]) for r in rows) + 2
    for c, row_lines in zip(checks, laid[1:], strict=True):
        lines.extend(row_lines)
        if not c.skipped:
            guestinfo = f"guestinfo: address {c.address}; started: {c.state}"
            lines.extend(report.note(guestinfo, indent))
        for e in c.events:
            lines.extend(report.note(e, indent))
    return "\n".join(lines)
