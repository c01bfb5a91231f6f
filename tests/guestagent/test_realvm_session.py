"""The tether in a real Linux VM, end to end: QEMU boots Debian's kernel with ``vic agent``
as PID 1 (``vic.lab.realvm``); the sealed session runs over the VM's 16550 UART, through
the kernel's boot noise on the line, into a real ``vic relay`` (``[[pipe]]`` ingress,
labelled ``session``) and on to the real appliance (``VspcService`` with ``[sessions]``
on, the VM's guestinfo the file store on its writable share). Every check is lab
scenario ``realvm``'s (``vic.lab.realvm_checks``), through the real CLI: ``vic console
exec`` (stdout/stderr apart, exit code, every byte value, a signal, a tty seeing a
resize), ``vic console logs --tail``, ``vic console attach`` resized, with the main
process's exit code. One VM serves every check (booting costs most)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from common.proto.link.header import HeaderDecoder
from vic.lab import cli, realvm
from vic.lab.appliance_config import lab_config
from vic.lab.realvm_checks import render, run_checks
from vic.lab.realvm_pty import PtyCommand
from vic.lab.realvm_scenario import VM, RealVm, booted, console_tail
from vspc.endpoint import Endpoint
from vspc.service import VspcService


@pytest.fixture
async def vm(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[RealVm]:
    why = realvm.unavailable()
    if why:
        pytest.skip(why)
    workdir = tmp_path
    service: VspcService = await nursery.start(VspcService(lab_config(workdir)).run)
    await nursery.start(Endpoint(service).run)
    try:
        async with booted(service, workdir) as v:
            yield v
    except BaseException:
        print(console_tail(workdir, 60))
        raise


@pytest.mark.slow
async def test_a_real_vm_serves_exec_attach_and_logs_through_the_appliance(vm: RealVm) -> None:
    began = time.monotonic()
    checks = await run_checks(vm)
    print(render("A real VM", VM, checks))
    for c in checks:
        assert c.ok, f"{c.what}: {c.seen}"
    header, _ = HeaderDecoder().feed(bytes(vm.tap.streams[-1]))  # the relay names each stream
    assert header is not None
    assert (header.vm, header.kind, header.label) == (VM, "pipe", "session")
    print(
        f"realvm: boot to session {vm.boot_seconds:.1f} s, checks {time.monotonic() - began:.1f} s"
    )


def test_the_lab_skips_the_real_vm_with_the_reason_and_leaves_it_out_of_all(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(realvm, "unavailable", lambda: "no QEMU on this test's machine")
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    assert cli.run(parser.parse_args(["--scenario", "realvm"])) == 0
    out = capsys.readouterr().out
    assert "skipped: no QEMU on this test's machine" in out
    assert "LAB RESULT: all consoles byte-exact" in out
    assert parser.parse_args([]).scenario == "all" and "realvm" not in cli.SCENARIOS


# prints its terminal's size, waits for SIGWINCH (blocked first: none is lost), prints it
# again, exits with the length of the line it reads
WINCH_CHILD = """
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGWINCH])
print(*reversed(os.get_terminal_size(0)), flush=True)
signal.sigwait([signal.SIGWINCH])
print(*reversed(os.get_terminal_size(0)), flush=True)
sys.exit(len(input()))
"""


async def test_a_pty_command_owns_its_terminal_and_a_resize_signals_it(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", WINCH_CHILD]
    term = await PtyCommand.start(argv, 24, 80, cwd=tmp_path, env=dict(os.environ))
    try:
        with trio.fail_after(30):
            await term.expect(rb"24 80\r\n")
            term.resize(50, 132)  # only the kernel sends SIGWINCH: to its terminal's owner
            await term.expect(rb"50 132\r\n")
            await term.type(b"four\r")
            assert await term.wait() == 4
    finally:
        await term.aclose()
