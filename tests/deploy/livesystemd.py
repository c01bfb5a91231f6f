"""A real systemd (PID 1 of a new PID and mount namespace) running deploy/systemd's units.

``boot()`` starts ``/lib/systemd/systemd --system`` under ``unshare --pid --fork
--mount --mount-proc`` with ``container=`` set, its own tmpfs on /run, /var/lib and
/var/log (the units' Runtime/State/LogsDirectory stay inside), the user ``vic`` from
deploy/sysusers.d added to bind-mounted copies of /etc/passwd and /etc/group, and
the units under /run/systemd/system: the shipped unit, the shipped compat drop-in
(systemd < 253 has no Type=notify-reload) and a test drop-in that changes only where
things are (ExecStart, config path) and what this machine needs (see ``DROPIN``).
``Systemd.ctl`` runs systemctl inside; ``close`` kills the namespace's PID 1, and
with it everything it started. Nothing touches the host's systemd (there is none).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.support.vic_cli import REPO

SYSTEMD = Path("/lib/systemd/systemd")
UNITS = REPO / "deploy" / "systemd"
VIC_IDS = 64990  # uid and gid of the user vic in the namespace's passwd copy

BOOT = """set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /run
if [ -n "$PYENV" ]; then  # the interpreter under /root (0700): alone on a 0755 tmpfs
    mkdir -p /run/vic-test-pyenv
    mount --bind "$PYENV" /run/vic-test-pyenv
    mount -t tmpfs -o mode=0755 tmpfs /root
    mkdir -p "$PYENV"
    mount --move /run/vic-test-pyenv "$PYENV"
fi
mount -t tmpfs tmpfs /var/lib
mount -t tmpfs tmpfs /var/log
mkdir -p /run/systemd/system /run/vic-test
cp -r "$UNITS"/. /run/systemd/system/
cp "$CONFIGS"/* /run/vic-test/
chmod 0644 /run/vic-test/*
cp /etc/passwd /run/vic-test/passwd
cp /etc/group /run/vic-test/group
echo "vic:x:$VIC_IDS:$VIC_IDS:vic:/var/lib/vic:/usr/sbin/nologin" >> /run/vic-test/passwd
echo "vic:x:$VIC_IDS:" >> /run/vic-test/group
mount --bind /run/vic-test/passwd /etc/passwd
mount --bind /run/vic-test/group /etc/group
exec env -i container=vic-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \\
    SYSTEMD_UNIT_PATH=/run/systemd/system "$SYSTEMD" --system --unit=vic-test.target \\
    --log-target=console --show-status=no
"""

TARGET = """[Unit]
Description=vic-channel units under test
DefaultDependencies=no
"""
# The only units systemd sees (SYSTEMD_UNIT_PATH): ours, and empty stand-ins for the
# system units they order against, so the host's own units (udev, journald, tmpfiles)
# stay out. A service's default dependencies still apply to ours, unchanged.
STANDINS = (
    "sysinit.target",
    "basic.target",
    "network.target",
    "network-online.target",
    "shutdown.target",
    "multi-user.target",
    "slices.target",
    "system.slice",
)

# Only what differs on this test machine: the program and config paths; the interpreter
# under /root (so /root is readable, and traversable by vic); a 2 s watchdog so that a
# few intervals pass within the test; output to a file (no journald here).
DROPIN = """[Service]
ExecStart=
ExecStart={vic} {daemon} --config /run/vic-test/{daemon}.toml
ProtectHome=read-only
WatchdogSec=2s
StandardOutput=append:/run/vic-test/{daemon}.log
StandardError=inherit
"""
# A checkout under /tmp (a CI clone, say) would be hidden by the unit's PrivateTmp=yes.
PRIVATE_TMP_OFF = "PrivateTmp=no\n"


def dropin(vic: Path, daemon: str) -> str:
    """The test drop-in for ``daemon``, run from ``vic`` (this checkout's venv)."""
    text = DROPIN.format(vic=vic, daemon=daemon)
    paths = (vic.resolve(), Path(os.path.realpath(sys.executable)))
    if any(p.is_relative_to(t) for p in paths for t in (Path("/tmp"), Path("/var/tmp"))):
        text += PRIVATE_TMP_OFF
    return text


class BootError(RuntimeError):
    """systemd did not come up here (the reason says why)."""


class Systemd:
    def __init__(self, proc: subprocess.Popen[bytes], pid: int, log: Path) -> None:
        self.proc, self.pid, self.log = proc, pid, log

    def ctl(self, *args: str, check: bool = True) -> str:
        """``systemctl args`` inside the namespace; its stdout."""
        r = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "systemctl", "--no-pager", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"systemctl {' '.join(args)}: {r.returncode} {r.stderr}")
        return r.stdout

    def read(self, path: str) -> str:
        """A file as the namespace sees it ("" if missing)."""
        r = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "cat", path],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return r.stdout

    def show(self, unit: str, prop: str) -> str:
        return self.ctl("show", "-p", prop, "--value", unit).strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, 9)  # PID 1 of the namespace: everything in it goes too
            self.proc.wait(10)


def boot(tmp: Path, configs: dict[str, str], timeout: float = 30.0) -> Systemd:
    """systemd running the vic-vspc and vic-relay units with ``configs`` (daemon ->
    TOML text); raises ``BootError`` when it cannot run here."""
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            raise BootError(f"no {tool}")
    if not SYSTEMD.exists():
        raise BootError(f"no {SYSTEMD}")
    if os.geteuid() != 0:
        raise BootError("not root: cannot make the namespaces and mounts")
    units, cfg = tmp / "units", tmp / "configs"
    units.mkdir()
    cfg.mkdir()
    (units / "vic-test.target").write_text(TARGET)
    for name in STANDINS:
        (units / name).write_text(
            f"[Unit]\nDescription={name} (stand-in)\nDefaultDependencies=no\n"
        )
    vic = Path(sys.executable).parent / "vic"
    for daemon, text in configs.items():
        name = f"vic-{daemon}.service"
        shutil.copy(UNITS / name, units / name)
        drop = units / f"{name}.d"
        drop.mkdir()
        shutil.copy(UNITS / "notify-reload-compat.conf", drop / "compat.conf")
        (drop / "test.conf").write_text(dropin(vic, daemon))
        (cfg / f"{daemon}.toml").write_text(text)
    script = tmp / "boot.sh"
    script.write_text(BOOT)
    pyenv = Path(os.path.realpath(sys.executable)).parents[2]  # ~/.pyenv/versions/X
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "UNITS": str(units),
        "CONFIGS": str(cfg),
        "VIC_IDS": str(VIC_IDS),
        "SYSTEMD": str(SYSTEMD),
        "PYENV": str(pyenv) if str(pyenv).startswith("/root/") else "",
    }
    log = tmp / "systemd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "sh", str(script)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    sd = Systemd(proc, _child(proc, timeout, log), log)
    try:
        _wait_running(sd, timeout)
    except BaseException:
        sd.close()
        raise
    return sd


def _child(proc: subprocess.Popen[bytes], timeout: float, log: Path) -> int:
    """unshare's forked child: PID 1 inside (its PID out here)."""
    deadline = time.monotonic() + timeout
    path = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BootError(f"unshare failed: {log.read_text()[-500:]}")
        kids = path.read_text().split() if path.exists() else []
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    raise BootError("unshare started nothing")


def _wait_running(sd: Systemd, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        if sd.proc.poll() is not None:
            raise BootError(f"systemd exited: {sd.log.read_text()[-2000:]}")
        state = sd.ctl("is-system-running", check=False).strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.1)
    raise BootError(f"systemd not running after {timeout} s ({state})")
