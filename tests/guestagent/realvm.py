"""A real Linux VM for the tether: QEMU (TCG) boots Debian's kernel with this machine's
root filesystem shared read-only over 9p and ``vic agent`` as PID 1 (``init=``).

* ttyS0 (the kernel console, the agent's stderr) goes to ``console.log``;
* ttyS1 is a real 16550 UART whose other end is a Unix socket QEMU listens on: a
  pipe-backed serial port as ESX makes it, for ``vic relay``'s ``[[pipe]]`` ingress;
* a writable 9p share, mounted in the guest at the same path as on the host, carries
  the agent's TOML and its file-store guestinfo.

The init script writes the kernel log onto ttyS1 before the agent starts: boot noise on
the session line, as on a real VM. The recipe: ``../shared/DESIGN.md``, "A real Linux VM".
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from common.proto.link.header import HeaderDecoder, OriginHeader

ROOT = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"
NEEDED_MODULES = ("9pnet_virtio", "9p.ko", "virtio_pci")


@dataclass(frozen=True)
class Kernel:
    vmlinuz: str
    initrd: str


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
    kernel = _newest_kernel()
    if kernel is None:
        return "no /boot/vmlinuz-* with its initrd (apt-get install linux-image-amd64)"
    missing = _initrd_lacks(kernel.initrd)
    if missing:
        return (
            f"{kernel.initrd} lacks {', '.join(missing)}: add '9p 9pnet 9pnet_virtio "
            "virtio_pci' to /etc/initramfs-tools/modules and run update-initramfs -u"
        )
    return ""


def kernel() -> Kernel:
    k = _newest_kernel()
    assert k is not None
    return k


INIT = """#!/bin/sh
# PID 1 of the test VM: the initramfs has moved /dev, /proc, /sys into the 9p root.
mount -t tmpfs -o mode=755 run /run
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share {share}
# boot noise on the session line before the agent takes it; raw first: the appliance's
# handshake bytes arriving meanwhile must not echo, stop (^S) or flush (^C) the output
exec 3<>/dev/ttyS1
stty raw -echo <&3
dmesg >&3 2>/dev/null
exec 3>&-
echo "realvm: starting the agent, uptime $(cut -d' ' -f1 /proc/uptime) s" >&2
cd {root}
export PYTHONDONTWRITEBYTECODE=1 HOME=/run PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
exec {python} -m vic.cli agent --config {share}/agent.toml
"""


def agent_toml(share: Path) -> str:
    return (
        f'[guestinfo]\nbackend = "file"\npath = "{share / "vm1.json"}"\npoll-interval = 0.1\n'
        '[console]\ntransport = "serial"\npath = "/dev/ttyS1"\n'
        "[session]\nenabled = true\nhandshake-timeout = 5.0\nbackoff-max = 0.5\n"
        "[network]\npublish = false\n"
    )


@dataclass(frozen=True)
class VmFiles:
    share: Path  # writable share: agent.toml, vm1.json
    init: Path
    serial: Path  # QEMU's listening socket for ttyS1
    console: Path  # ttyS0 output


def prepare(tmp: Path) -> VmFiles:
    share = tmp / "share"
    share.mkdir()
    (share / "agent.toml").write_text(agent_toml(share))
    init = tmp / "init.sh"
    init.write_text(INIT.format(share=share, root=ROOT, python=sys.executable))
    init.chmod(0o755)
    return VmFiles(share, init, tmp / "vm1.com2", tmp / "console.log")


def qemu_argv(files: VmFiles) -> list[str]:
    k = kernel()
    append = (
        "root=hostroot rootfstype=9p rootflags=trans=virtio,version=9p2000.L,msize=262144 ro "
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


async def start_qemu(files: VmFiles, log: Path) -> trio.Process:
    with log.open("wb") as out:
        return await trio.lowlevel.open_process(
            qemu_argv(files), stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )


def relay_toml(files: VmFiles, appliance_sock: Path) -> dict[str, object]:
    """``vic relay`` with the VM's UART as a ``[[pipe]]`` in connect mode (the VM end
    listens, as ESX's pipe in server mode), forwarding to the appliance's socket."""
    return {
        "host": "esx-qemu",
        "egress": {"default": {"kind": "unix", "path": str(appliance_sock)}},
        "metrics": {"enabled": False},
        "timeouts": {"retry-min": 0.05, "retry-max": 0.5},
        "pipe": [
            {
                "name": "vm1-com2",
                "vm": "vm1",
                "path": str(files.serial),
                "mode": "connect",
                "label": "serial1",
            }
        ],
    }


class PrefixedStream(trio.abc.Stream):
    """``stream`` with ``first`` (bytes already read past the origin header) in front;
    ``seen`` keeps the first ``TAP_BYTES`` received (to look for the boot noise)."""

    TAP_BYTES = 256 * 1024

    def __init__(self, stream: trio.abc.Stream, first: bytes) -> None:
        self.stream = stream
        self.first = first
        self.seen = bytearray()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        out: bytes | bytearray
        if self.first:
            n = len(self.first) if max_bytes is None else max_bytes
            out, self.first = self.first[:n], self.first[n:]
        else:
            out = await self.stream.receive_some(max_bytes)
        self.seen += out[: max(0, self.TAP_BYTES - len(self.seen))]
        return out

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_origin(stream: trio.abc.Stream) -> tuple[OriginHeader, PrefixedStream] | None:
    """Read the relay's origin header; the stream that carries what follows it (None if
    the stream ended first: the relay gave up on a VM end that went away)."""
    dec = HeaderDecoder()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return None
        header, rest = dec.feed(bytes(data))
        if header is not None:
            return header, PrefixedStream(stream, rest)
