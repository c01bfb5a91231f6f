"""`vic lab up` leaves the lab running, `vic console` reaches it through D/env alone, and
`vic lab down` stops every process it started and removes what it made."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from vic.lab import lab_state

ROOT = Path(__file__).resolve().parents[2]
UP_TIMEOUT = 300.0


async def vic(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str]:
    with trio.fail_after(timeout):
        proc = await trio.run_process(
            [sys.executable, "-m", "vic.cli", *args],
            cwd=ROOT,
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def parse_env(text: str) -> dict[str, str]:
    """What sourcing D/env would export."""
    out = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "export":
            for word in words[1:]:
                key, _, value = word.partition("=")
                out[key] = value
    return out


async def attach_and_type(
    env: dict[str, str], vm: str, line: bytes, want: bytes, *, replay: bool = True
) -> bytes:
    """Attach following the console, type ``line``; the output once ``want`` is in it.
    ``replay``: a raw console's (a tethered VM's attach replays nothing: see its logs)."""
    cmd = [sys.executable, "-m", "vic.cli", "console", "attach", vm]
    cmd += ["--replay", "65536"] if replay else []
    proc = await trio.lowlevel.open_process(
        cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    seen = b""
    try:
        with trio.fail_after(60):
            await proc.stdin.send_all(line)
            while want not in seen:
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, f"attach ended; it printed {seen!r}"
                seen += chunk
    finally:
        proc.kill()
        await proc.wait()
    return seen


async def test_up_console_down(tmp_path: Path) -> None:
    d = tmp_path / "lab"
    rc, out = await vic("lab", "up", "--dir", str(d), timeout=UP_TIMEOUT)
    try:
        assert rc == 0, out
        env_text = (d / "env").read_text()
        assert env_text in out  # what it printed to paste is what it wrote
        lab = parse_env(env_text)
        vms = lab["VIC_LAB_VMS"].split()
        assert {"vm-esx-1", "vm-mesh-1", "vm-agent-1"} <= set(vms), vms
        assert all(u.startswith("http://127.0.0.1:") for u in lab["VIC_LAB_METRICS"].split())
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIC_")} | lab

        tethered = lab["VIC_LAB_TETHERED"].split()
        assert "vm-agent-1" in tethered and set(tethered) <= set(vms), lab
        assert ("vm-agent-2" in tethered) == ("vm-agent-2" in vms), lab  # serial, with socat
        rc, listing = await vic("console", "list", env=env)
        assert rc == 0, listing
        for vm in set(vms) - set(tethered):  # a tethered VM has a session, no raw console
            assert f" {vm} " in listing, listing
        await _exec_and_logs(env, "vm-agent-1")
        await _docker_ps_and_logs(env | {"DOCKER_CONFIG": str(tmp_path / "docker")}, "vm-agent-1")
        if "vm-agent-2" in tethered:  # its session runs over the serial line
            await _exec_over_serial(env, "vm-agent-2")
        # a VM across the relay mesh
        await attach_and_type(
            env, "vm-mesh-1", b"over the mesh\r", b"vm-mesh-1 read: over the mesh"
        )

        rc, again = await vic("lab", "up", "--dir", str(d))
        assert rc == 1 and f"already up in {d}" in again, again
        started = lab_state.recorded(d)
        assert {"appliance", "hosts", "vm-agent-1"} <= {s.name for s in started}
        assert all(lab_state.alive(s) for s in started), started
    finally:
        rc, bye = await vic("lab", "down", "--dir", str(d))
    assert rc == 0 and "stopped" in bye, bye
    gone = [s for s in started if lab_state.alive(s)]
    assert not gone, gone
    assert not d.exists()  # sockets, logs, configs: up made the directory, down removed it


async def _exec_and_logs(env: dict[str, str], vm: str) -> None:
    """The tethered agent VM, through D/env alone: exec (stdout, stderr, exit code), logs."""
    rc, out = await vic("console", "exec", vm, "--", "uname", "-a", env=env)
    assert rc == 0 and out.startswith("Linux "), out
    rc, out = await vic(
        "console", "exec", vm, "--", "sh", "-c", "echo o; echo e >&2; exit 4", env=env
    )
    assert (rc, out) == (4, "o\ne\n"), out
    # its main process (a shell that greets, then echoes its stdin) logs through the session
    rc, out = await vic("console", "logs", vm, env=env)
    assert (rc, out) == (0, f"hello from {vm}\n"), out
    # attach reaches that process's stdin through the session; its answer is logged too
    want = f"{vm} read: hi tether".encode()
    await attach_and_type(env, vm, b"hi tether\n", want, replay=False)
    rc, out = await vic("console", "logs", vm, "--tail", "1", env=env)
    assert (rc, out) == (0, f"{vm} read: hi tether\n"), out


async def _docker_ps_and_logs(env: dict[str, str], vm: str) -> None:
    """The real docker client at the lab's Docker endpoint, through D/env alone (run
    after ``_exec_and_logs``, whose attach logged a second line)."""
    assert env["DOCKER_HOST"].startswith("unix://") and env["DOCKER_HOST"].endswith("docker.sock")
    docker = shutil.which("docker")
    if docker is None:  # Debian's docker.io (the client only); without it, nothing to run
        return
    with trio.fail_after(60):
        ps = await trio.run_process(
            [docker, "ps", "--format", "{{.Names}} {{.State}}"], env=env, capture_stdout=True
        )
        logs = await trio.run_process(
            [docker, "logs", "--tail", "5", vm], env=env, capture_stdout=True
        )
    assert f"{vm} running" in ps.stdout.decode().splitlines(), ps.stdout
    assert logs.stdout.decode() == f"hello from {vm}\n{vm} read: hi tether\n", logs.stdout
    with trio.fail_after(60):
        ex = await trio.run_process(
            [docker, "exec", vm, "sh", "-c", "uname -s; exit 3"],
            env=env,
            capture_stdout=True,
            check=False,
        )
    assert (ex.returncode, ex.stdout) == (3, b"Linux\n"), ex


async def _exec_over_serial(env: dict[str, str], vm: str) -> None:
    """The tethered VM on the serial line: exec with stdin, exit code; its tty's logs."""
    data = bytes(range(256)) * 64
    with trio.fail_after(60):
        r = await trio.run_process(
            [sys.executable, "-m", "vic.cli", "console", "exec", "-i", vm, "--", "cat"],
            cwd=ROOT,
            env=env,
            stdin=data,
            capture_stdout=True,
            check=False,
        )
    assert (r.returncode, r.stdout == data) == (0, True), r
    rc, out = await vic("console", "exec", vm, "--", "sh", "-c", "echo o; exit 5", env=env)
    assert (rc, out) == (5, "o\n"), out
    rc, out = await vic("console", "logs", vm, env=env)
    assert (rc, out) == (0, f"hello from {vm}\r\n"), out  # a tty's line ending


async def test_down_with_nothing_up(tmp_path: Path) -> None:
    rc, out = await vic("lab", "down", "--dir", str(tmp_path / "none"))
    assert rc == 0 and "nothing to stop" in out, out
    assert not (tmp_path / "none").exists()


# --- lab_state: what down relies on, on real processes -------------------------------


def spawn(script: str) -> subprocess.Popen[bytes]:
    """A shell that says ``ready`` on stdout once its traps are set."""
    proc = subprocess.Popen(
        ["sh", "-c", f"{script}; echo ready; exec sleep 600"], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def test_stop_terms_then_kills_and_skips_recycled_pids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab_state, "TERM_GRACE", 0.5)  # a deadline, not a wait
    polite, stubborn = spawn(":"), spawn("trap '' TERM")
    try:
        lab_state.record(tmp_path, "polite", polite.pid)
        lab_state.record(tmp_path, "stubborn", stubborn.pid)
        started = lab_state.recorded(tmp_path)
        assert [s.name for s in started] == ["polite", "stubborn"]
        assert all(lab_state.alive(s) for s in started)
        # a record whose pid the kernel has since given to another process: not ours
        other = lab_state.Started("recycled", os.getpid(), started[0].start - 1)
        assert not lab_state.alive(other)
        assert lab_state.stop([*started, other]) == ["stubborn"]
        assert polite.wait(5) == -signal.SIGTERM and stubborn.wait(5) == -signal.SIGKILL
        assert not any(lab_state.alive(s) for s in started)
    finally:
        polite.kill()
        stubborn.kill()
        polite.wait()
        stubborn.wait()


def test_a_zombie_counts_as_gone(tmp_path: Path) -> None:
    proc = spawn(":")
    lab_state.record(tmp_path, "z", proc.pid)
    (s,) = lab_state.recorded(tmp_path)
    proc.kill()
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert Path(f"/proc/{proc.pid}").exists() and not lab_state.alive(s)
    proc.wait()


async def test_down_clears_a_lab_that_died(tmp_path: Path) -> None:
    """A lab whose processes are gone (killed, a reboot): down removes what is left."""
    d = tmp_path / "dead"
    d.mkdir()
    (d / lab_state.MARKER).write_text("existed\n")
    (d / "console.sock").touch()
    (d / "pids").mkdir()
    (d / "pids" / "appliance.pid").write_text("999999999 1\n")  # beyond pid_max: never alive
    rc, out = await vic("lab", "down", "--dir", str(d))
    assert rc == 0 and "stopped 0 processes" in out, out
    assert d.exists() and not any(d.iterdir())  # up did not make D: only its contents go
