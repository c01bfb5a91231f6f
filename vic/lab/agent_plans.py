"""What each agent VM of lab scenario 3 runs, and what its console must then hold."""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass

from common.proto import guestinfo as gi

MISSING = "/opt/vic-lab/no-such-command"


@dataclass
class VMPlan:
    vm: str
    channel: str  # "hybrid" | "serial"
    session: gi.SessionConfig
    expected: bytes = b""
    status: int | None = None
    signal: str | None = None
    error: str = ""  # expected in `started` (a launch failure)
    typed: bytes = b""  # typed into the console once `prompt` is on it
    prompt: bytes = b""
    send: str = ""  # then ask the guest, through guestinfo, to deliver this signal
    netns: str = ""  # run the agent in this network namespace
    iface: str = ""


# --------------------------------------------------------------------------- sessions


def _loop(vm: str, n: int) -> tuple[str, bytes]:
    script = (
        f'i=1; while [ $i -le {n} ]; do echo "$VM line $i of {n}: '
        f'$((i * 7919 % 10007))"; i=$((i + 1)); done'
    )
    out = b"".join(f"{vm} line {i} of {n}: {i * 7919 % 10007}\n".encode() for i in range(1, n + 1))
    return script, out


BINARY_SH = r"printf 'binary: \000\377\033[0m\n'"
BINARY_OUT = b"binary: \x00\xff\x1b[0m\n"


def plans(rng: random.Random, lines: int) -> list[VMPlan]:
    """The VMs every lab run has (the netns VM comes from :func:`netns_plan`)."""

    def sid() -> str:
        return f"{rng.getrandbits(48):012x}"

    return [_plan_typed_bulk(sid(), lines), _plan_tty_signal(sid(), lines), _plan_missing(sid())]


def _plan_typed_bulk(sid: str, lines: int) -> VMPlan:
    """vm-agent-1: reads what is typed, prints binary, lines and 4 MiB, exits 3."""
    vm = "vm-agent-1"
    loop, loop_out = _loop(vm, lines)
    typed = b"greetings from the appliance"
    # 4 MiB right before the exit, more than the kernel buffers on the way hold: an agent
    # that published the status before flushing its console would still hold part of it
    # when the VM powers off at the status (tried: such an agent loses 2-3 MiB here)
    bulk_n = 4 << 20
    bulk = (f"{vm} bulk output\n".encode() * (bulk_n // 10 + 1))[:bulk_n]
    script = (
        f'echo "hello from $VM"; read -r line; echo "typed: $line"; {BINARY_SH}; '
        f'{loop}; yes "$VM bulk output" | head -c {bulk_n}; exit 3'
    )
    return VMPlan(
        vm,
        "hybrid",
        gi.SessionConfig(
            id=sid,
            path="/bin/sh",
            args=("sh", "-c", script),
            env=(f"VM={vm}",),
            openstdin=True,
            runblock=True,
        ),
        expected=f"hello from {vm}\n".encode()
        + b"typed: "
        + typed
        + b"\n"
        + BINARY_OUT
        + loop_out
        + bulk,
        status=3,
        typed=typed + b"\n",
        prompt=f"hello from {vm}\n".encode(),
    )


def _plan_tty_signal(sid: str, lines: int) -> VMPlan:
    """vm-agent-2: a tty session over the serial line, ended by a SIGTERM asked for."""
    vm = "vm-agent-2"
    loop, loop_out = _loop(vm, lines)
    script = (
        f'if [ -t 0 ] && [ -t 1 ]; then echo "stdin and stdout are a tty"; fi; '
        f'{BINARY_SH}; {loop}; echo "waiting for a signal"; exec sleep 120'
    )
    text = b"stdin and stdout are a tty\n" + BINARY_OUT + loop_out + b"waiting for a signal\n"
    return VMPlan(
        vm,
        "serial",
        gi.SessionConfig(
            id=sid,
            path="/bin/sh",
            args=("sh", "-c", script),
            env=(f"VM={vm}",),
            tty=True,
            runblock=True,
        ),
        expected=text.replace(b"\n", b"\r\n"),  # the pty's line discipline (onlcr)
        status=128 + signal.SIGTERM,
        signal="SIGTERM",
        send="SIGTERM",
        prompt=b"waiting for a signal\r\n",
    )


def _plan_missing(sid: str) -> VMPlan:
    """vm-agent-3: a command that does not exist (the launch error is published)."""
    return VMPlan(
        "vm-agent-3",
        "hybrid",
        gi.SessionConfig(
            id=sid, path=MISSING, args=("no-such-command", "--version"), runblock=True
        ),
        error=f"cannot run {MISSING}: No such file or directory",
    )


def netns_plan(rng: random.Random, ns: str, iface: str) -> VMPlan:
    vm = "vm-agent-dhcp"
    script = f'set -- $(ip -4 -o addr show dev {iface}); echo "my address: $4"; exit 0'
    return VMPlan(
        vm,
        "hybrid",
        gi.SessionConfig(
            id=f"{rng.getrandbits(48):012x}",
            path="/bin/sh",
            args=("sh", "-c", script),
            runblock=True,
        ),
        status=0,
        netns=ns,
        iface=iface,  # expected: filled in from the published address
    )
