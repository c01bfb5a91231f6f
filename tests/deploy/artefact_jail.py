"""The single-file artefacts for the tests, and a chroot to run them in.

``artefacts_dir`` builds ``vic-relay`` and ``vic-agent`` into ``dist/`` with
``scripts/build-artefacts``, or reuses them when they are newer than every source
file they bundle. ``make_jail`` lays out a root that holds only the artefacts, the C
runtime they link against (glibc, zlib) and busybox (for the agent's sessions):
no Python, no venv, no worktree.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("vic-relay", "vic-agent")
BUNDLED = ("common", "relay", "guestagent")
BUILD_INPUTS = (
    "scripts/build-artefacts",
    "constraints-build.txt",
    "constraints.txt",
    "pyproject.toml",
)
# What a minimal image's C runtime holds (glibc and zlib); PyInstaller
# bundles everything else.
C_RUNTIME = (
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libutil.so.1",
    "libresolv.so.2",
    "libz.so.1",  # the one-file bootloader's own (it inflates the bundle)
)
LOADER = Path("/lib64/ld-linux-x86-64.so.2")
ENV = {"PATH": "/bin", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}  # the program's, in the jail
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


def _newest_input() -> float:
    files = [p for d in BUNDLED for p in (ROOT / d).rglob("*.py")]
    files += [ROOT / f for f in BUILD_INPUTS]
    return max(p.stat().st_mtime for p in files if p.exists())


def fresh_dist() -> Path | None:
    """``dist/`` when both artefacts are there and newer than what they bundle."""
    dist = ROOT / "dist"
    built = [dist / n for n in NAMES]
    if all(p.is_file() for p in built) and min(p.stat().st_mtime for p in built) > _newest_input():
        return dist
    return None


def _pyinstaller_importable() -> bool:
    venv_python = ROOT / ".venv" / "bin" / "python"
    probe = [str(venv_python), "-c", "import PyInstaller"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def artefacts_dir() -> Path:
    """``dist/`` with fresh artefacts, built if need be. Under a lock: pytest-xdist
    workers each ask, and only one of them builds (and installs PyInstaller)."""
    lock = ROOT / ".cache" / "build-artefacts.lock"
    lock.parent.mkdir(exist_ok=True)
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        return fresh_dist() or build(ROOT / "dist")


def build(out: Path) -> Path:
    """Build both artefacts into ``out``; skip when PyInstaller cannot be installed."""
    r = subprocess.run(
        [str(ROOT / "scripts" / "build-artefacts"), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
    if r.returncode != 0 and not _pyinstaller_importable():
        pytest.skip(f"PyInstaller cannot be installed here: {tail}")
    assert r.returncode == 0, f"scripts/build-artefacts failed:\n{tail}"
    return out


def bundled_packages(artefact: Path) -> set[str]:
    """Top-level names of the Python modules inside a one-file artefact."""
    readers = pytest.importorskip("PyInstaller.archive.readers")
    pyz = readers.CArchiveReader(str(artefact)).open_embedded_archive("PYZ.pyz")
    return {name.split(".")[0] for name in pyz.toc}


def preconditions() -> str | None:
    """Why the artefacts cannot be run here, or None."""
    if os.geteuid() != 0:
        return "chroot needs root"
    if not LOADER.exists():
        return f"no {LOADER}: the jail's C runtime is laid out for x86_64 glibc"
    if shutil.which("busybox") is None:
        return "busybox is not installed (Debian package busybox)"
    return None


@dataclass(frozen=True)
class Jail:
    root: Path

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def argv(self, name: str, *args: str) -> list[str]:
        return [CHROOT, str(self.root), f"/{name}", *args]

    def run(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(name, *args), env=ENV, capture_output=True, text=True, timeout=120
        )

    def extracted_bytes(self) -> int:
        """What the one-file bootloaders unpacked under the jail's /tmp."""
        tmp = self.path("/tmp")
        return sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file() and not p.is_symlink())


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # 50 MB artefacts: a hard link when on one file system
    except OSError:
        shutil.copy2(src, dst)


def make_jail(root: Path, artefacts: Path) -> Jail:
    libdir = LOADER.resolve().parent  # /lib/x86_64-linux-gnu on Debian
    for name in C_RUNTIME:
        if (libdir / name).exists():
            _place((libdir / name).resolve(), root / libdir.relative_to("/") / name)
    _place(LOADER.resolve(), root / LOADER.relative_to("/"))
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    _place(busybox.resolve(), root / "bin" / "busybox")
    for applet in ("sh", "true", "cat"):
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("tmp", "run", "etc", "dev"):
        (root / d).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    # Sessions get /dev/null for stdin (a guest's devtmpfs has it).
    os.mknod(root / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    for name in NAMES:
        _place(artefacts / name, root / name)
    return Jail(root)


def help_seconds(jail: Jail, name: str, runs: int = 5) -> float:
    """Median wall time of ``NAME --help`` (a cold start: unpack, interpreter, argparse)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = jail.run(name, "--help")
        times.append(time.perf_counter() - t0)
        assert r.returncode == 0, r.stderr
    return statistics.median(times)


def children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return out


def zombies_of(ppid: int) -> list[int]:
    found = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            rest = Path(f"/proc/{p}/stat").read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if rest[0] == "Z" and int(rest[1]) == ppid:
            found.append(int(p))
    return found


def nspid(pid: int) -> int:
    """The pid as seen inside its innermost PID namespace."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(ln for ln in status if ln.startswith("NSpid:")).split()[-1])


def pidns_refused() -> str:
    """Why ``unshare --pid`` cannot run here, or ""."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    p = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, check=False)
    return "" if p.returncode == 0 else p.stderr.decode().strip() or f"exit {p.returncode}"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rss_mib(bootloader_pid: int) -> tuple[float, float]:
    """(bootloader, program) resident set sizes in MiB: the one-file bootloader stays
    as the parent of the process that runs Python."""
    kids = children(bootloader_pid)
    program = sum(_rss_kib(k) for k in kids)
    return _rss_kib(bootloader_pid) / 1024, program / 1024


def report(line: str) -> None:
    """Figures go to stdout (``pytest -s`` shows them) and to the build's log file."""
    print(f"\nartefact: {line}")
    log = ROOT / "dist" / "figures.txt"
    if log.parent.is_dir():
        with log.open("a") as f:
            f.write(line + "\n")
