"""Bookkeeping for console log write failures: held bytes, gaps, episodes.

Sans-IO (no trio, no clock: times come in as arguments). The log writer uses it:

* a write that fails because the disk is full (ENOSPC, EDQUOT) is *held*: the
  unwritten bytes go back to the front of the port's queue and are retried;
  while the disk is full the writer holds at most ``log-hold-bytes`` and the VM
  waits beyond that (its transport is no longer read);
* any other write error (a directory that is a file, no permission, a read-only
  file system...) will not heal by waiting, so the bytes are dropped at once
  and the hole is recorded: a ``gap`` event in the console's event log with
  the offset in the live log file where the bytes belong and their length,
  counted in ``vspc_console_log_gap_bytes_total`` / ``vspc_console_log_gaps_total``;
* an *episode* runs from the first failed write to the first round in which
  every write succeeds; it is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

#: errno values that mean "no room now": worth holding the bytes and waiting.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(err: int | None) -> bool:
    return err in DISK_FULL


def skip(chunks: list[bytes], n: int) -> list[bytes]:
    """``chunks`` without their first ``n`` bytes (no copy of whole chunks)."""
    out: list[bytes] = []
    for c in chunks:
        if n >= len(c):
            n -= len(c)
            continue
        out.append(c[n:] if n else c)
        n = 0
    return out


@dataclass
class Gap:
    """A hole in one log file: ``length`` bytes missing at ``offset`` of the live file."""

    offset: int
    length: int
    reason: str

    def fields(self) -> dict[str, object]:
        return {"offset": self.offset, "length": self.length, "reason": self.reason}


@dataclass
class Episode:
    """One run of failed log writes, from the first failure to the first clean round."""

    started: float
    error: str
    failures: int = 0
    held_peak: int = 0
    gap_bytes: int = 0
    gaps: int = 0
    what: str = "console"  # whose logs

    def failed(self, held: int) -> None:
        self.failures += 1
        self.held_peak = max(self.held_peak, held)

    def dropped(self, n: int, new_gap: bool) -> None:
        self.gap_bytes += n
        self.gaps += int(new_gap)

    def start_line(self, hold_bytes: int) -> str:
        beyond = "pausing VMs" if self.what == "console" else "dropping lines as gaps"
        return (
            f"{self.what} logs cannot be written ({self.error}): holding up to {hold_bytes} bytes "
            f"and {beyond} beyond that while the disk is full; other errors drop bytes "
            "and record gaps in the event logs"
        )

    def end_line(self, now: float) -> str:
        return (
            f"{self.what} logs written again after {now - self.started:.1f} s: {self.failures} "
            f"failed writes, at most {self.held_peak} bytes held, {self.gap_bytes} bytes "
            f"lost in {self.gaps} gaps"
        )
