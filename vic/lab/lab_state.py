"""What ``vic lab up`` leaves in its directory, and how ``vic lab down`` stops it.

The directory ``D`` holds a marker (``.vic-lab``: up made it), one ``pids/<name>.pid``
per process the lab started (``<pid> <start time>``: the start time from
``/proc/<pid>/stat``, so a pid the kernel gave to another process since is not
ours), the configs, logs, sockets and ``env``. Waiting for a process to go uses a
pidfd (``pidfd_open``), which works for processes that are not our children.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = ".vic-lab"
TERM_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
KILL_GRACE = 5.0


def default_dir() -> Path:
    """``$XDG_RUNTIME_DIR/vic-lab`` when that is set, else ``.lab`` in the repository."""
    run = os.environ.get("XDG_RUNTIME_DIR")
    return Path(run) / "vic-lab" if run else ROOT / ".lab"


@dataclass(frozen=True)
class Started:
    name: str
    pid: int
    start: int  # clock ticks after boot (field 22 of /proc/<pid>/stat)


def start_time(pid: int) -> int | None:
    """The process's start time, or None when it is gone (or a zombie: it has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(s: Started) -> bool:
    return start_time(s.pid) == s.start


def record(d: Path, name: str, pid: int) -> None:
    """Note ``pid`` as started by the lab in ``d`` (written before anything waits on it)."""
    start = start_time(pid)
    if start is None:
        return  # already gone: nothing to stop later
    pids = d / "pids"
    pids.mkdir(exist_ok=True)
    tmp = pids / f".{name}.tmp"
    tmp.write_text(f"{pid} {start}\n")
    tmp.replace(pids / f"{name}.pid")


def recorded(d: Path) -> list[Started]:
    out = []
    for f in sorted((d / "pids").glob("*.pid")):
        with contextlib.suppress(OSError, ValueError):
            pid, start = f.read_text().split()
            out.append(Started(f.stem, int(pid), int(start)))
    return out


def is_lab(d: Path) -> bool:
    return (d / MARKER).exists()


def running(d: Path) -> list[Started]:
    return [s for s in recorded(d) if alive(s)]


def _open(s: Started) -> int | None:
    """A pidfd for ``s`` if it is still the process the lab started."""
    try:
        fd = os.pidfd_open(s.pid)
    except OSError:
        return None
    if not alive(s):  # checked after opening: the fd cannot point at a recycled pid now
        os.close(fd)
        return None
    return fd


def _signal_and_wait(fds: dict[int, Started], sig: int, grace: float) -> None:
    for fd in fds:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, sig)
    poll = select.poll()
    for fd in fds:
        poll.register(fd, select.POLLIN)
    deadline = time.monotonic() + grace
    while fds and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poll.poll(left * 1000):
            poll.unregister(fd)
            fds.pop(fd)
            os.close(fd)


def stop(started: list[Started]) -> list[str]:
    """SIGTERM every live process of ``started``, SIGKILL what is left after TERM_GRACE;
    the names of those that needed SIGKILL (or outlived it)."""
    fds = {fd: s for s in started if (fd := _open(s)) is not None}
    _signal_and_wait(fds, signal.SIGTERM, TERM_GRACE)
    killed = [s.name for s in fds.values()]
    _signal_and_wait(fds, signal.SIGKILL, KILL_GRACE)
    for fd in fds:
        os.close(fd)
    return killed


def remove(d: Path) -> None:
    """Remove what up created: the directory if it made it, else everything in it."""
    made = (d / MARKER).read_text().strip() == "created" if is_lab(d) else False
    if made:
        shutil.rmtree(d, ignore_errors=True)
        return
    for p in d.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
