"""What lab scenario ``realvm`` checks against the booted VM, each through the real CLI
(``vic console ...`` processes against the appliance's console socket), in this order:

* the boot: the kernel's log on the UART before the handshake (seen by the line tap);
* ``vic console exec``: stdout and stderr apart, the exit code, from the VM's kernel
  with the agent as its PID 1; every byte value through ``cat`` with ``-i``; a signal;
* ``vic console exec -it`` on a terminal: ``stty size`` sees the terminal's size, then
  a resize (the terminal resized, the CLI's SIGWINCH, the guest pty's TIOCSWINSZ);
* ``vic console logs --tail 1``: the main process's first line;
* ``vic console attach`` on a terminal: resized, the main process (on a tty) sees it;
  ``quit`` ends it with 7, which is the attach's exit code and, in guestinfo, the
  container's exit status.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import trio

from common.proto.session.sync import MAGIC
from vic.lab import report
from vic.lab.agent_processes import STEP_TIMEOUT
from vic.lab.realvm import ROOT
from vic.lab.realvm_pty import PtyCommand
from vic.lab.realvm_scenario import RealVm, booted, console_tail
from vic.lab.session_checks import env, vic, vic_cmd
from vspc.guestinfo_watch import wait_for_exit
from vspc.service import VspcService
from vspc.sessions.api import SessionsApi

TRIES = 50  # lines typed, at most, until the guest's terminal shows the new size
EVERY_BYTE = bytes(range(256)) * 40
KERNEL_LOG = re.compile(rb"\[ *\d+\.\d{6}\] ")  # dmesg's timestamp


@dataclass
class Check:
    what: str
    seen: str
    ok: bool
    seconds: float = 0.0


async def check_boot_noise(vm: RealVm) -> Check:
    """Kernel log lines (dmesg's ``[    1.234567] ``) went up the line before the sync
    marker of the stream that carries the session; a line lost while the relay
    reconnected (the serial line drops bytes then) costs only itself."""
    what = "boot: kernel log on the UART, then the handshake"
    streams = [bytes(s) for s in vm.tap.streams]
    synced = [i for i, s in enumerate(streams) if MAGIC in s]
    if not synced:
        return Check(what, f"no sync marker in {len(streams)} relayed streams", False)
    last = synced[-1]
    before = [*streams[:last], streams[last][: streams[last].find(MAGIC)]]
    lines = sum(len(KERNEL_LOG.findall(s)) for s in before)
    seen = (
        f"session up {vm.boot_seconds:.1f} s after power-on; {lines} kernel log lines "
        f"before it, {sum(map(len, before))} bytes in {last + 1} relayed streams"
    )
    return Check(what, seen, lines > 0)


async def check_exec(vm: RealVm) -> Check:
    r = await vic(
        vm.workdir,
        "exec",
        vm.vm,
        "--",
        "sh",
        "-c",
        "cat /proc/1/comm; uname -r; echo err >&2; exit 3",
    )
    out = r.stdout.decode(errors="replace").split()
    ok = (
        len(out) == 2
        and out[0].startswith("python")  # the agent is PID 1 of this kernel
        and out[1] == vm.release
        and (r.stderr, r.returncode) == (b"err\n", 3)
    )
    seen = f"stdout {r.stdout!r}, stderr {r.stderr!r}, exit {r.returncode}"
    return Check("exec: PID 1's name, uname -r; stderr apart; exit 3", seen, ok)


async def check_stdin(vm: RealVm) -> Check:
    r = await vic(vm.workdir, "exec", vm.vm, "-i", "--", "cat", stdin=EVERY_BYTE)
    ok = (r.stdout, r.returncode) == (EVERY_BYTE, 0)
    seen = f"{len(r.stdout)}/{len(EVERY_BYTE)} bytes back, exit {r.returncode}"
    seen += ", byte-exact" if r.stdout == EVERY_BYTE else ", differs"
    return Check("exec -i cat: every byte value, 40 times", seen, ok)


async def check_signal(vm: RealVm) -> Check:
    r = await vic(vm.workdir, "exec", vm.vm, "--", "sh", "-c", "kill -TERM $$")
    seen = f"exit {r.returncode} (128 + SIGTERM is 143)"
    return Check("exec sh -c 'kill -TERM $$'", seen, r.returncode == 143)


async def _until_size(term: PtyCommand, prompt: bytes, want: bytes) -> list[bytes]:
    """Type ``prompt`` until the guest answers ``want`` (the sizes it answered)."""
    sizes: list[bytes] = []
    for _ in range(TRIES):  # the CLI reads keys and SIGWINCH apart: order is not given
        await term.type(prompt)
        sizes.append((await term.expect(rb"(\d+ \d+)\r?\n")).group(1))
        if sizes[-1] == want:
            break
    return sizes


async def check_tty_resize(vm: RealVm) -> Check:
    script = 'stty size; while read x; do [ "$x" = q ] && exit 5; stty size; done'
    argv = vic_cmd(vm.workdir, "exec", vm.vm, "-it", "--", "sh", "-c", script)
    term = await PtyCommand.start(argv, 24, 80, cwd=ROOT, env=env())
    try:
        with trio.fail_after(STEP_TIMEOUT):
            first = (await term.expect(rb"(\d+ \d+)\r?\n")).group(1)
            term.resize(50, 132)  # the CLI's SIGWINCH handler runs by now: output came
            sizes = [first, *await _until_size(term, b"\r", b"50 132")]
            await term.type(b"q\r")
            code = await term.wait()
    except (trio.TooSlowError, EOFError) as e:
        return Check("exec -it: stty size, then a resize", f"failed: {e}"[:200], False)
    finally:
        await term.aclose()
    ok = sizes[0] == b"24 80" and sizes[-1] == b"50 132" and code == 5
    seen = f"sizes {' -> '.join(s.decode() for s in dict.fromkeys(sizes))}, exit {code}"
    return Check("exec -it on a 24x80 terminal resized to 50x132", seen, ok)


async def check_logs(vm: RealVm) -> Check:
    """The main process's first line, once the appliance has logged it."""
    want = f"main up in {vm.release}".encode()
    with trio.move_on_after(STEP_TIMEOUT):
        async with aclosing(SessionsApi(vm.sessions).logs(vm.vm, follow=True)) as chunks:
            got = b""
            async for chunk in chunks:
                got += chunk
                if want in got:
                    break
    r = await vic(vm.workdir, "logs", vm.vm, "--tail", "1")
    ok = r.stdout.rstrip(b"\r\n") == want and r.returncode == 0
    return Check("logs --tail 1 (the main process's first line)", f"{r.stdout!r}", ok)


async def check_attach(vm: RealVm) -> Check:
    what = "attach on a terminal, resized; 'quit' ends the main process: 7"
    term = await PtyCommand.start(vic_cmd(vm.workdir, "attach", vm.vm), 24, 80, cwd=ROOT, env=env())
    try:
        with trio.fail_after(STEP_TIMEOUT):
            await term.expect(rb"attached")
            first = await _until_size(term, b"\r", b"24 80")  # the attach's own size
            term.resize(50, 132)
            sizes = first + await _until_size(term, b"\r", b"50 132")
            await term.type(b"quit\r")
            code = await term.wait()
            info = await wait_for_exit(vm.guestinfo, vm.vm, "realvm-main", STEP_TIMEOUT)
    except (trio.TooSlowError, EOFError, AssertionError) as e:
        return Check(what, f"failed: {e}"[:200], False)
    finally:
        await term.aclose()
    ok = sizes[-1] == b"50 132" and code == 7 and info.status == 7
    seen = f"sizes {' -> '.join(s.decode() for s in dict.fromkeys(sizes))}, "
    seen += f"attach exit {code}, guestinfo status {info.status}"
    return Check(what, seen, ok)


CHECKS: tuple[Callable[[RealVm], Awaitable[Check]], ...] = (
    check_boot_noise,
    check_exec,
    check_stdin,
    check_signal,
    check_tty_resize,
    check_logs,
    check_attach,  # last: the main process ends
)


async def run_checks(vm: RealVm) -> list[Check]:
    """Every check, in order; one that times out or loses its CLI fails alone."""
    out = []
    for check in CHECKS:
        began = trio.current_time()
        try:
            c = await check(vm)
        except (trio.TooSlowError, EOFError, OSError) as e:
            c = Check(check.__name__.removeprefix("check_"), f"failed: {e!r}", False)
        c.seconds = trio.current_time() - began
        out.append(c)
    return out


async def run(service: VspcService, workdir: Path) -> list[Check]:
    """Boot the VM once, run every check against it, power it off."""
    try:
        async with booted(service, workdir) as vm:
            return await run_checks(vm)
    except (trio.TooSlowError, RuntimeError, OSError) as e:
        tail = console_tail(workdir, 5).replace("\n", " | ")
        return [Check("boot, session over the UART", f"failed: {e!r}; console: {tail}", False)]


def render(title: str, vm: str, checks: list[Check]) -> str:
    rows = [("VM", "check", "time", "result")]
    rows += [(vm, c.what, f"{c.seconds:.1f}s", "OK" if c.ok else "FAILED") for c in checks]
    laid = report.columns(rows, wrapped={1}, right={2})
    lines = report.paragraph(f"== {title}", indent=3) + laid[0]
    for c, row_lines in zip(checks, laid[1:], strict=True):
        lines.extend(row_lines)
        lines.extend(
            " " * (len(vm) + 4) + s for s in report.wrap(c.seen, report.WIDTH - len(vm) - 4)
        )
    return "\n".join(lines)
