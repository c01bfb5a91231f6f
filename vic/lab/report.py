"""What the lab checks and prints: per console, bytes sent vs bytes received; the tables it
prints, laid out to fit ``WIDTH`` columns (cells wrapped at spaces, notes indented)."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

WIDTH = 100  # no line the lab prints is wider
MAX_LINES = 6  # a cell or note longer than this many lines is cut, ending in "..."


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


def wrap(text: str, width: int, *, max_lines: int = MAX_LINES) -> list[str]:
    """``text`` in lines of at most ``width`` columns (at spaces where it can), at most
    ``max_lines`` of them (the last then ends in "...")."""
    lines = textwrap.wrap(
        text, max(width, 6), break_on_hyphens=False, max_lines=max_lines, placeholder=" ..."
    )
    return lines or [""]


def note(text: str, indent: int, *, width: int = WIDTH) -> list[str]:
    """One note under a table row: ``- text`` at ``indent``, continued two columns further."""
    return [
        (" " * indent + "- " if i == 0 else " " * (indent + 2)) + line
        for i, line in enumerate(wrap(text, width - indent - 2))
    ]


def paragraph(text: str, *, indent: int = 0, width: int = WIDTH) -> list[str]:
    """``text`` wrapped to ``width``, its continuation lines indented by ``indent``."""
    first, *rest = wrap(text, width - indent)
    return [first, *(" " * indent + r for r in rest)]


def fit_widths(natural: Sequence[int], minimum: Sequence[int], width: int, gap: int) -> list[int]:
    """Column widths that fit ``width``: the widest column above its minimum loses a column
    at a time until the row fits (or every column is at its minimum)."""
    widths = list(natural)
    while sum(widths) + gap * (len(widths) - 1) > width:
        over = [i for i, w in enumerate(widths) if w > minimum[i]]
        if not over:
            break
        widths[max(over, key=lambda i: widths[i])] -= 1
    return widths


def columns(
    rows: Sequence[Sequence[str]],
    *,
    wrapped: Collection[int],
    right: Collection[int] = (),
    width: int = WIDTH,
    gap: int = 2,
) -> list[list[str]]:
    """Lay ``rows`` (the header first) out in columns that fit ``width``: the columns in
    ``wrapped`` are narrowed, widest first (to no less than their header), and their cells
    wrapped; the others keep their width unless nothing else fits. Returns each row's lines;
    a row's first line holds the first line of every cell."""
    n = len(rows[0])
    natural = [max(len(r[i]) for r in rows) for i in range(n)]
    minimum = [max(len(rows[0][i]), 6) if i in wrapped else natural[i] for i in range(n)]
    widths = fit_widths(natural, minimum, width, gap)
    if sum(widths) + gap * (n - 1) > width:  # too many columns kept whole: wrap them all
        wrapped = range(n)
        widths = fit_widths(natural, [6] * n, width, gap)
    out = []
    for row in rows:
        cells = [wrap(c, widths[i]) if i in wrapped else [c] for i, c in enumerate(row)]
        height = max(len(c) for c in cells)
        lines = []
        for k in range(height):
            parts = []
            for i, cell in enumerate(cells):
                v = cell[k] if k < len(cell) else ""
                parts.append(f"{v:>{widths[i]}}" if i in right else f"{v:<{widths[i]}}")
            lines.append((" " * gap).join(parts).rstrip())
        out.append(lines)
    return out


def render(title: str, checks: list[ConsoleCheck]) -> str:
    rows = [("VM", "path", "sent", "received", "to VM", "result")]
    for c in checks:
        to_vm = f"{len(c.typed_seen)}/{len(c.typed)}"
        verdict = "SKIPPED" if c.skipped else c.verdict()  # why: a note under the row
        rows.append((c.name, c.path, str(len(c.sent)), str(len(c.received)), to_vm, verdict))
    laid = columns(rows, wrapped={1, 5}, right={2, 3, 4})
    lines = paragraph(f"== {title}", indent=3) + laid[0]
    w = max(len(r[0]) for r in rows)
    for c, row_lines in zip(checks, laid[1:], strict=True):
        lines.extend(row_lines)
        for e in ([f"skipped: {c.skipped}"] if c.skipped else []) + c.events:
            lines.extend(note(e, w + 2))
    return "\n".join(lines)
