"""`vic console` as a real process: what it exits with when the VM is unknown or not
tethered (1 and one stderr line naming it), and an exec ended by its ``--timeout``
(124, as coreutils' timeout(1), with one line saying so)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from tests.vspc.test_sessions_cli import VM, console, tethered
from tests.vspc.test_vspc_ops import HOST, wait_console
from vic.lab.esx_sim import EsxConnection, SimVM

UNKNOWN = "vm-nobody"


def _one_line(stderr: bytes, *words: str) -> str:
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


async def test_an_unknown_vm_exits_1_with_one_line_naming_it(tmp_path: Path) -> None:
    async with tethered(tmp_path):
        for action in (["logs"], ["logs", "-f"], ["logs", "--tail", "3"]):
            r = await console(tmp_path, *action, UNKNOWN)
            assert (r.returncode, r.stdout) == (1, b""), r
            _one_line(r.stderr, UNKNOWN)
        r = await console(tmp_path, "exec", UNKNOWN, "--", "true")
        assert r.returncode == 1, r
        _one_line(r.stderr, UNKNOWN, "no session")
        r = await console(tmp_path, "attach", UNKNOWN)
        assert r.returncode == 1, r
        _one_line(r.stderr, UNKNOWN)
        r = await console(tmp_path, "logs", VM, "--tail", "1")  # the tethered one: fine
        assert r.returncode == 0, r


async def test_exec_on_a_vm_with_a_raw_console_only_exits_1(tmp_path: Path) -> None:
    """A VM the appliance knows from its raw console but holds no session for: exec and
    logs exit 1 naming it; attach takes its raw console (not an error)."""
    vm = SimVM.random(random.Random(13), name="vm-raw")
    async with tethered(tmp_path) as (d, _), trio.open_nursery() as nursery:
        with trio.fail_after(15):
            src = await EsxConnection.open(nursery, HOST, d.esx_port, vm=vm)
            await src.send_console(b"hello")
            await wait_console(d, vm)
        r = await console(tmp_path, "exec", vm.canonical_uuid, "--", "true")
        assert r.returncode == 1, r
        _one_line(r.stderr, vm.canonical_uuid, "no session")
        r = await console(tmp_path, "logs", vm.canonical_uuid)
        assert r.returncode == 1, r
        _one_line(r.stderr, vm.canonical_uuid)
        r = await console(tmp_path, "attach", vm.canonical_uuid, "--replay", "5", "--no-follow")
        assert (r.returncode, r.stdout) == (0, b"hello"), r
        await src.aclose()
        nursery.cancel_scope.cancel()


async def test_exec_timeout_exits_124_with_one_line(tmp_path: Path) -> None:
    async with tethered(tmp_path):
        r = await console(tmp_path, "exec", VM, "--timeout", "0.5", "--", "sleep", "60")
        assert (r.returncode, r.stdout) == (124, b""), r
        _one_line(r.stderr, "timed out", "signal 9")
        r = await console(tmp_path, "exec", VM, "--timeout=30", "--", "sh", "-c", "exit 7")
        assert r.returncode == 7, r  # within its timeout: the command's own code
        r = await console(tmp_path, "exec", "--timeout", "-1", VM, "--", "true")
        assert r.returncode == 2 and b"--timeout" in r.stderr, r


@pytest.mark.parametrize(
    ("obj", "code", "said"),
    [
        ({"signal": 9, "timed_out": True}, 124, "exec timed out (killed by signal 9)"),
        ({"code": 3, "timed_out": True}, 124, "exec timed out (exit code 3)"),
        ({"error": "late", "timed_out": True}, 124, "exec timed out (no exit status)"),
        ({"signal": 9}, 137, ""),
        ({"code": 0, "timed_out": False}, 0, ""),
    ],
)
def test_the_exit_frame_to_an_exit_code(
    capsys: pytest.CaptureFixture[str], obj: dict[str, object], code: int, said: str
) -> None:
    from vspc.sessions.client import _exit_code

    assert _exit_code(obj) == code
    assert capsys.readouterr().err == (f"vic console: {said}\n" if said else "")
