"""A real Linux VM for the tether: QEMU (TCG) boots Debian's kernel with this machine's
root filesystem shared read-only over 9p and ``vic agent`` as PID 1 (``init=``).

* ttyS0 (the kernel console, the agent's stderr) goes to ``console.log``;
* ttyS1 is a real 16550 UART whose other end is a Unix socket QEMU listens on: a
  pipe-backed serial port as ESX makes it, for ``vic relay``'s ``[[pipe]]`` ingress
  (``connect`` mode: the VM end listens, as ESX's pipe in server mode);
* a writable 9p share, mounted in the guest at the same path as on the host, is the
  appliance's guestinfo file store (``<vm>.json``: the session secret in, the
  container's status out).

The init script writes the kernel log onto ttyS1 before the agent starts: boot noise on
the session line, as on a real VM. ``unavailable()`` says why no VM can boot here (no
QEMU, no kernel, an initrd without the 9p modules). The recipe: ``../shared/DESIGN.md``,
"A real Linux VM". Used by ``vic lab --scenario realvm`` (``vic.lab.realvm_scenario``)
and by tests/guestagent/test_realvm_session.py.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from vic.lab.session_checks import env

ROOT = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"
NEEDED_MODULES = ("9pnet_virtio", "9p.ko", "virtio_pci")
READY_TIMEOUT = 40.0  # the relay's start-up on a loaded machine


@dataclass(frozen=True)
class Kernel:
    vmlinuz: str
    initrd: str

    @property
    def release(self) -> str:
        return Path(self.vmlinuz).name.removeprefix("vmlinuz-")


def _newest_kernel() -> Kernel | None:
    for vmlinuz in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        initrd = vmlinuz.replace("vmlinuz-", "initrd.img-")
        if os.path.exists(initrd):
            return Kernel(vmlinuz, initrd)
    return None


@functools.cache
def _initrd_lacks(initrd: str) -> tuple[str, ...]:
    """The 9p/virtio modules the initrd does not hold (``lsinitramfs``)."""
    if shutil.which("lsinitramfs") is None:
        return NEEDED_MODULES
    listing = subprocess.run(
        ["lsinitramfs", initrd], capture_output=True, text=True, check=False, timeout=120
    ).stdout
    return tuple(m for m in NEEDED_MODULES if m not in listing)


def unavailable() -> str:
    """Why no VM can be booted here ("" when one can)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (9p share with security_model=none)"
    if shutil.which(QEMU) is None:
        return f"{QEMU} not installed (apt-get install qemu-system-x86)"
    k = _newest_kernel()
    if k is None:
        return "no /boot/vmlinuz-* with its initrd (apt-get install linux-image-amd64)"
    missing = _initrd_lacks(k.initrd)
    if missing:
        return (
            f"{k.initrd} lacks {', '.join(missing)}: add '9p 9pnet 9pnet_virtio "
            "virtio_pci' to /etc/initramfs-tools/modules and run update-initramfs -u"
        )
    return ""


def kernel() -> Kernel:
    k = _newest_kernel()
    assert k is not None, unavailable()
    return k


INIT = """#!/bin/sh
# PID 1 of the VM: the initramfs has moved /dev, /proc, /sys into the 9p root.
mount -t tmpfs -o mode=755 run /run
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share {share}
# boot noise on the session line before the agent takes it; raw first: the appliance's
# handshake bytes arriving meanwhile must not echo, stop (^S) or flush (^C) the output
exec 3<>/dev/ttyS1
stty raw -echo <&3
dmesg >&3 2>/dev/null
exec 3>&-
echo "realvm: $(date +%T.%3N) starting the agent, uptime $(cut -d' ' -f1 /proc/uptime) s" >&2
cd {root}
export PYTHONDONTWRITEBYTECODE=1 HOME=/run PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
exec {python} -m vic.cli agent --config {conf}
"""


def agent_toml(guestinfo: Path) -> str:
    return (
        f'[guestinfo]\nbackend = "file"\npath = "{guestinfo}"\npoll-interval = 0.1\n'
        '[console]\ntransport = "serial"\npath = "/dev/ttyS1"\n'
        "[session]\nenabled = true\nhandshake-timeout = 5.0\nbackoff-max = 0.5\n"
        "[network]\npublish = false\n"
    )


@dataclass(frozen=True)
class VmFiles:
    vm: str
    share: Path  # writable share: the guestinfo file store (<vm>.json)
    conf: Path  # the agent's TOML (read through the read-only root)
    init: Path
    serial: Path  # QEMU's listening socket for ttyS1
    console: Path  # ttyS0 output

    @property
    def guestinfo(self) -> Path:
        return self.share / f"{self.vm}.json"


def prepare(d: Path, share: Path, vm: str) -> VmFiles:
    """The VM's files in ``d``; ``share`` (the guestinfo store) is its writable share."""
    d.mkdir(parents=True, exist_ok=True)
    share.mkdir(parents=True, exist_ok=True)
    files = VmFiles(vm, share, d / "agent.toml", d / "init.sh", d / f"{vm}.com2", d / "console.log")
    files.conf.write_text(agent_toml(files.guestinfo))
    files.init.write_text(
        INIT.format(share=share, root=ROOT, python=sys.executable, conf=files.conf)
    )
    files.init.chmod(0o755)
    return files


def qemu_argv(files: VmFiles) -> list[str]:
    k = kernel()
    # cache=loose: the guest caches the (read-only, unchanging) root's metadata and pages,
    # which halves the agent's Python start-up under TCG (about 40 s -> 20 s here)
    rootflags = "trans=virtio,version=9p2000.L,msize=262144,cache=loose"
    append = (
        f"root=hostroot rootfstype=9p rootflags={rootflags} ro "
        f"console=ttyS0 quiet panic=-1 init={files.init}"
    )
    return [
        QEMU, "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1",
        "-nodefaults", "-nographic", "-display", "none", "-monitor", "none", "-nic", "none",
        "-no-reboot", "-kernel", k.vmlinuz, "-initrd", k.initrd, "-append", append,
        "-fsdev", "local,id=r,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=r,mount_tag=hostroot",
        "-fsdev", f"local,id=s,path={files.share},security_model=none",
        "-device", "virtio-9p-pci,fsdev=s,mount_tag=share",
        "-serial", f"file:{files.console}",
        "-serial", f"unix:{files.serial},server=on,wait=off",
    ]  # fmt: skip


async def start_qemu(files: VmFiles) -> trio.Process:
    """Power on; QEMU's own output goes to ``qemu.log`` beside the console log."""
    with files.console.with_name("qemu.log").open("wb") as out:
        return await trio.lowlevel.open_process(
            qemu_argv(files), stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )


def relay_toml(files: VmFiles, egress: Path, label: str = "session") -> str:
    """``vic relay`` (host ``esx-qemu``) with the VM's UART as a ``[[pipe]]`` in connect
    mode, each stream labelled ``label``, forwarded to the Unix socket ``egress``."""

    def q(p: Path | str) -> str:
        return json.dumps(str(p))  # a TOML basic string

    return (
        'host = "esx-qemu"\nlog-level = "warning"\n[metrics]\nenabled = false\n'
        "[timeouts]\nretry-min = 0.05\nretry-max = 0.5\n"
        f'[egress.default]\nkind = "unix"\npath = {q(egress)}\n'
        f'[[pipe]]\nname = "{files.vm}-com2"\nvm = "{files.vm}"\npath = {q(files.serial)}\n'
        f'mode = "connect"\nlabel = "{label}"\n'
    )


async def start_relay(conf: Path) -> trio.Process:
    """``vic relay --config conf`` (output to ``conf``'s ``.log``), once it says READY=1."""
    notify = conf.with_suffix(".notify")
    notify.unlink(missing_ok=True)
    with trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind(str(notify))
        log = os.open(conf.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "vic.cli", "relay", "--config", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=ROOT,
                env=env() | {"NOTIFY_SOCKET": str(notify)},
            )
        finally:
            os.close(log)
        try:
            with trio.fail_after(READY_TIMEOUT):
                while b"READY=1" not in (await sock.recv(65536)).split(b"\n"):
                    pass
        except BaseException:
            proc.kill()
            raise
    notify.unlink(missing_ok=True)
    return proc
