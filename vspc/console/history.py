"""What the console log directory remembers between runs (blocking; run in the log thread).

* ``<stem>.meta.json`` names the console a set of files belongs to (uuid, label,
  display), so ``list`` and replay serve consoles of VMs that went away, from
  their files, after a restart or after retention forgot them.
* ``.vspc-running`` is written when the service starts and removed when it stops
  cleanly. Found at start, it means the last run was killed: every console that
  was connected then (its event log's last ``vm_connected`` has no
  ``vm_disconnected`` after it) lost whatever the VM sent meanwhile, an unknown
  amount, so its event log gets a ``gap`` with ``reason: restart`` and
  ``length: null`` at the end of its log file, and a ``vm_disconnected``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from vspc.console.eventlog import format_event
from vspc.console.logfile import replace_file, rotated, size_of
from vspc.core.identity import PortKey

MARKER = ".vspc-running"
META = ".meta.json"
EVENTS = ".events.jsonl"
ONLINE = b'"event":"vm_connected"'
OFFLINE = b'"event":"vm_disconnected"'
TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class DiskConsole:
    key: PortKey
    display: str
    stem: str
    logged: int  # bytes in its log files


def meta_bytes(key: PortKey, display: str) -> bytes:
    obj = {"uuid": key.uuid, "label": key.label, "display": display}
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def begin(log_dir: Path, now: float) -> list[str]:
    """Mark this run as started; after an unclean stop, record restart gaps first.

    Returns the stems that got a restart gap.
    """
    marked: list[str] = []
    if (log_dir / MARKER).exists():
        for events in sorted(log_dir.glob("*" + EVENTS)):
            stem = events.name[: -len(EVENTS)]
            if _was_connected(events):
                _restart_gap(log_dir, stem, events, now)
                marked.append(stem)
    replace_file(os.fspath(log_dir / MARKER), f"{os.getpid()}\n".encode())
    return marked


def end(log_dir: Path) -> None:
    """This run stopped cleanly: nothing the VMs sent went unlogged or unmarked."""
    (log_dir / MARKER).unlink(missing_ok=True)


def _was_connected(events: Path) -> bool:
    tail = _tail_of(events, TAIL_BYTES)
    return tail.rfind(ONLINE) > tail.rfind(OFFLINE)


def _restart_gap(log_dir: Path, stem: str, events: Path, now: float) -> None:
    offset = size_of(os.fspath(log_dir / f"{stem}.log"))
    fields: dict[str, object] = {"offset": offset, "length": None, "reason": "restart"}
    lines = format_event("gap", fields, now) + format_event(
        "vm_disconnected", {"reason": "restart"}, now
    )
    fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size and _tail_of(events, 1) != b"\n":
            lines = b"\n" + lines  # a line torn by the kill stays alone
        os.write(fd, lines)
    finally:
        os.close(fd)


def _tail_of(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - n))
            return f.read()
    except OSError:
        return b""


def scan(log_dir: Path) -> list[DiskConsole]:
    """Every console the directory has a meta file for."""
    found = []
    try:
        metas = list(log_dir.glob("*" + META))
    except OSError:
        return []
    for meta in metas:
        stem = meta.name[: -len(META)]
        try:
            obj = json.loads(meta.read_bytes())
            key = PortKey(str(obj["uuid"]), str(obj["label"]))
            display = str(obj.get("display") or key.uuid)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.append(DiskConsole(key, display, stem, _logged(log_dir / f"{stem}.log")))
    return found


def _logged(live: Path) -> int:
    total = size_of(os.fspath(live))
    n = 1
    while (p := rotated(live, n)).exists():
        total += size_of(os.fspath(p))
        n += 1
    return total


def read_tail(log_dir: Path, stem: str, n: int) -> bytes:
    """The last ``n`` bytes the VM wrote, as far as the log files still hold them."""
    live = log_dir / f"{stem}.log"
    parts: list[bytes] = []
    want = n
    i = 0
    while want > 0:
        path = live if i == 0 else rotated(live, i)
        if not path.exists():
            break
        chunk = _tail_of(path, want)
        parts.append(chunk)
        want -= len(chunk)
        i += 1
    return b"".join(reversed(parts))
