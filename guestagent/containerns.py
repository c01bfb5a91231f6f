"""Entering a running process's namespaces, cgroups, root and working directory.

``open_target(pid)`` opens, in the agent, handles to what differs from the agent's
own: the ipc, uts, net, cgroup and mnt namespaces (entered in the child before exec,
where it is single-threaded, as ``setns`` for mnt requires), the pid namespace (the
*parent* switches ``pid_for_children`` around the fork, see ``children_in``, so the
exec is born inside it with no intermediate process), the cgroup of each mounted
hierarchy (the child writes "0" to its ``cgroup.procs``), the process's root (the
child ``fchdir``s and ``chroot``s into it) and its working directory and
environment (the exec's defaults).

Opening by fd in the parent means the child does no path lookups of its own before
it is inside; all handles are close-on-exec.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from common.ops.wiretext import wire
from guestagent.execspec import ExecStartError

log = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# entered in this order in the child; mnt last: the paths above are the agent's
CHILD_NAMESPACES = (
    ("ipc", CLONE_NEWIPC),
    ("uts", CLONE_NEWUTS),
    ("net", CLONE_NEWNET),
    ("cgroup", CLONE_NEWCGROUP),
    ("mnt", CLONE_NEWNS),
)
MAX_ENVIRON = 1024 * 1024
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class Target:
    """Handles on a container process, valid until ``close``."""

    pid: int
    namespaces: list[tuple[str, int, int]] = field(default_factory=list)  # (name, fd, type)
    pid_ns: int | None = None
    cgroup_procs: list[tuple[str, int]] = field(default_factory=list)  # (dir, fd)
    root: int | None = None
    cwd: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    def fds(self) -> list[int]:
        out = [fd for _, fd, _ in self.namespaces] + [fd for _, fd in self.cgroup_procs]
        out += [fd for fd in (self.pid_ns, self.root, self.cwd) if fd is not None]
        return out

    def close(self) -> None:
        for fd in self.fds():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.namespaces.clear()
        self.cgroup_procs.clear()
        self.pid_ns = self.root = self.cwd = None

    def drop_cwd(self) -> None:
        """The exec names its own working directory: do not enter the process's."""
        if self.cwd is not None:
            os.close(self.cwd)
            self.cwd = None

    def enter(self) -> None:  # pragma: no cover - runs in the child before exec
        """Child side: cgroups, namespaces, root, working directory. Raises
        ``OSError`` whose ``filename`` names the step that failed."""
        for d, fd in self.cgroup_procs:
            _step(f"cgroup {d}", os.write, fd, b"0")
        for name, fd, nstype in self.namespaces:
            _step(f"{name} namespace", setns, fd, nstype)
        if self.root is not None:
            _step("root directory", os.fchdir, self.root)
            _step("root directory", os.chroot, ".")
        if self.cwd is not None:
            _step("working directory", os.fchdir, self.cwd)


def _step(what: str, fn: object, *args: object) -> None:  # pragma: no cover - in the child
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as e:
        raise OSError(e.errno, e.strerror, what) from None


def _same(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _open_namespaces(t: Target) -> None:
    for name, nstype in CHILD_NAMESPACES:
        path = f"/proc/{t.pid}/ns/{name}"
        if os.path.exists(path) and not _same(path, f"/proc/thread-self/ns/{name}"):
            t.namespaces.append((name, os.open(path, os.O_RDONLY | os.O_CLOEXEC), nstype))
    path = f"/proc/{t.pid}/ns/pid"
    if not _same(path, "/proc/thread-self/ns/pid_for_children"):
        t.pid_ns = os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _read_environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        data = f.read(MAX_ENVIRON)
    env: dict[str, str] = {}
    for item in data.split(b"\x00"):
        k, eq, v = item.partition(b"=")
        if k and eq:
            env[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
    return env


def open_target(pid: int) -> Target:
    """Handles on process ``pid``; ``ExecStartError`` if it is gone or not reachable."""
    if not isinstance(pid, int) or pid <= 0:
        raise ExecStartError(f"bad container pid {pid!r}")
    t = Target(pid)
    try:
        _open_namespaces(t)
        t.cgroup_procs = _open_cgroups(pid)
        t.root = os.open(f"/proc/{pid}/root", _O_DIR)
        t.cwd = os.open(f"/proc/{pid}/cwd", _O_DIR)
        t.env = _read_environ(pid)
    except FileNotFoundError:
        t.close()
        raise ExecStartError(f"container process {pid} is gone") from None
    except OSError as e:
        t.close()
        where = f" ({e.filename})" if e.filename else ""
        raise ExecStartError(f"cannot reach container process {pid}{where}: {e.strerror}") from None
    return t


@contextlib.contextmanager
def children_in(pid_ns: int | None) -> Iterator[None]:
    """Processes forked inside the block are born in ``pid_ns`` (this thread only).
    Call no trio checkpoint inside: the switch is for this thread's forks only, but
    must not outlive the spawn."""
    if pid_ns is None:
        yield
        return
    back = os.open("/proc/thread-self/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            setns(pid_ns, CLONE_NEWPID)
        except OSError as e:
            raise ExecStartError(f"cannot enter the pid namespace: {e.strerror}") from None
        try:
            yield
        finally:
            setns(back, CLONE_NEWPID)
    finally:
        os.close(back)


# -- cgroups -----------------------------------------------------------------------------


def _parse_cgroup_file(path: str) -> dict[str, str]:
    """/proc/PID/cgroup -> {controllers: path}; cgroup v2's line is keyed ''."""
    out: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3:
                out[parts[1]] = parts[2]
    return out


def _unescape(s: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    if "\\" not in s:
        return s
    out, i = bytearray(), 0
    b = s.encode("utf-8", "surrogateescape")
    while i < len(b):
        if b[i : i + 1] == b"\\" and b[i + 1 : i + 4].isdigit():
            out.append(int(b[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        else:
            out.append(b[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def _cgroup_mounts() -> list[tuple[str, frozenset[str], str, str]]:
    """(fstype, super options, mount root, mount point) of this process's cgroup mounts."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, sep, post = line.rstrip("\n").partition(" - ")
            fields, rest = pre.split(" "), post.split(" ")
            if sep and len(fields) >= 5 and len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
                opts = frozenset(rest[2].split(","))
                mounts.append((rest[0], opts, _unescape(fields[3]), _unescape(fields[4])))
    return mounts


def _mount_of(mounts: list[tuple[str, frozenset[str], str, str]], ctrls: str) -> tuple[str, str]:
    """(root, point) of the hierarchy named by a /proc/PID/cgroup line ('' = v2)."""
    want = frozenset(ctrls.split(",")) if ctrls else frozenset()
    for fstype, opts, root, point in mounts:
        if (fstype == "cgroup2") if not want else (fstype == "cgroup" and want <= opts):
            return root, point
    raise LookupError(ctrls)


def _open_cgroups(pid: int) -> list[tuple[str, int]]:
    theirs = _parse_cgroup_file(f"/proc/{pid}/cgroup")
    ours = _parse_cgroup_file("/proc/self/cgroup")
    mounts = _cgroup_mounts()
    out: list[tuple[str, int]] = []
    try:
        for ctrls, path in theirs.items():
            if ours.get(ctrls) == path:
                continue
            try:
                root, point = _mount_of(mounts, ctrls)
            except LookupError:
                log.debug("cgroup hierarchy %r of pid %d is not mounted here", ctrls, pid)
                continue
            rel = os.path.relpath(path, root)
            if rel.startswith(".."):
                log.debug("cgroup %s of pid %d is outside %s", wire(path), pid, wire(root))
                continue
            d = os.path.normpath(os.path.join(point, rel))
            out.append((d, os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)))
    except BaseException:
        for _, fd in out:
            os.close(fd)
        raise
    return out
