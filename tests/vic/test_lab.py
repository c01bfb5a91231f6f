"""`vic lab` runs end to end and every console is byte-exact."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAB = [sys.executable, "-m", "vic.cli", "lab"]


def test_lab_runs_and_checks_every_byte(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vic.cli", "lab", "--lines", "30", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "LAB RESULT: all consoles byte-exact" in out
    assert "vMotion esx-a -> esx-b" in out and "aborted" in out
    for kind in ("raw TCP", "named pipe", "FIFO", "pty", "hybrid vsock", "through both relays"):
        assert kind in out
    _check_mesh_table(out)
    # the console logs on disk hold the bytes too
    assert any((tmp_path / "consoles").glob("*.log"))
    _check_agent_table(out)
    _check_sessions_table(out)
    _check_docker_table(out)


def _check_mesh_table(out: str) -> None:
    """Scenario 4: a peer link cut, then the appliance moving hosts, zero loss."""
    assert "== Relay mesh: a link cut, then the appliance moves hosts" in out
    rows = [ln for ln in out.splitlines() if ln.startswith("vm-mesh-")]
    assert len(rows) == 3 and all(
        r.rstrip().endswith("OK: every byte once, in order") for r in rows
    )
    assert out.count("link esx-m1 -> esx-m2 cut") == 3
    assert out.count("appliance moved to esx-m3") == 3
    assert re.search(r"opened [3-9] peer links for all 3 streams, 1 route change, 1 cut", out)


def _check_agent_table(out: str) -> None:
    """Scenario 3: real `vic agent` processes, as the appliance saw them through guestinfo."""
    assert "== VMs running the guest agent" in out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("vm-agent-")}
    assert set(rows) == {"vm-agent-1", "vm-agent-2", "vm-agent-3", "vm-agent-dhcp"}, rows
    for vm in ("vm-agent-1", "vm-agent-2", "vm-agent-3"):
        assert rows[vm].rstrip().endswith("  OK"), rows[vm]
    # exit status 3, after reading the line the appliance typed into the console
    assert re.search(r"  started +3 +\d", rows["vm-agent-1"]), rows["vm-agent-1"]
    assert "the process read it from its stdin" in out
    # the tty session waited for the SIGTERM the appliance asked for: 128 + 15, with the name
    assert "asked for SIGTERM through guestinfo (request 1); the guest acked it" in out
    assert re.search(r"  started +143 \(SIGTERM\) +\d", rows["vm-agent-2"]), rows["vm-agent-2"]
    # a command that does not exist: `started` carries the error text the user sees
    assert (
        "cannot run /opt/vic-lab/no-such-command: No such file or directory" in rows["vm-agent-3"]
    ), rows["vm-agent-3"]
    assert "the agent stayed up" in out
    # each console complete: n/n bytes, and equal to what the session printed
    for vm in ("vm-agent-1", "vm-agent-2"):
        m = re.search(r" (\d+)/(\d+) ", rows[vm])
        assert m and m[1] == m[2] and int(m[2]) > 0, rows[vm]
    dhcp = rows["vm-agent-dhcp"]
    assert dhcp.rstrip().endswith("  OK") or "SKIPPED" in dhcp, dhcp
    if "SKIPPED" not in dhcp:
        assert re.search(r"public 10\.213\.91\.\d+", dhcp), dhcp


def test_lab_sessions_scenario(tmp_path: Path) -> None:
    """`vic lab --scenario sessions`: exec with stderr apart and exit 3, logs --tail 2, and
    an exec whose output arrives exactly once across a relay killed and started again."""
    proc = subprocess.run(
        [*LAB, "--scenario", "sessions", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "LAB RESULT: all consoles byte-exact" in out
    assert "== VMs running the guest agent" not in out  # only the scenario asked for
    _check_sessions_table(out)


def _check_sessions_table(out: str) -> None:
    head = "== A tethered VM: vic console exec / logs"
    assert head in out
    rows = out[out.index(head) :].split("\nmetrics: ")[0].split("\n== ")[0].splitlines()
    assert sum(r.startswith("vm-sess-1  ") for r in rows) == 3, out
    assert "stdout b'out\\n', stderr b'err\\n', exit 3" in out
    assert "b'two\\nthree\\n', exit 0" in out
    assert re.search(r"(\d+)/\1 bytes, exit 0, every line once, in order", out), out
    # vMotion esx-a -> esx-b mid exec -i: every line once both ways; esx-a refused after
    assert sum(r.startswith("vm-vmo-1  ") for r in rows) == 2, out
    assert re.search(r"(\d+)/\1 bytes, exit 7, moved at line \d+, every line once", out), out
    assert "refused (not on 'esx-a'); exec: b'still here\\n', exit 0" in out, out
    assert len(rows) == 11 and all(len(r) <= 100 for r in rows), rows
    assert sum(r.rstrip().endswith("  OK") for r in rows) == 5, rows


def test_lab_docker_scenario(tmp_path: Path) -> None:
    """`vic lab --scenario docker`: the real docker client, every verb the endpoint serves."""
    proc = subprocess.run(
        [*LAB, "--scenario", "docker", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "LAB RESULT: all consoles byte-exact" in out
    assert "== A tethered VM" not in out  # only the scenario asked for
    _check_docker_table(out)


def _check_docker_table(out: str) -> None:
    head = "== The docker client against the appliance's Docker endpoint"
    assert head in out, out
    if f"{head} (tethered VMs): skipped: no docker client" in out:
        return  # no docker binary here: said so, and the lab still passes
    rows = out[out.index(head) :].split("\nmetrics: ")[0].splitlines()[1:]
    names = [r.split()[0] for r in rows[::2]]
    assert len(rows) == 30 and set(names) == {"vm-dock-1", "vm-dock-tty", "vm-dock-exit"}, rows
    assert all(r.rstrip().endswith("  OK") for r in rows[1::2]), rows
    for seen in (
        "exit 3, stdout b'out\\n', stderr b'err\\n'",
        "exit 21, stdout b'got hello\\n', stderr b'bye\\n'",
        "until b'one\\ntwo\\nthree\\n'; since b'four\\nsix\\n' + b'five\\n'",
        "stty size 30 100 -> 40 120, EXIT=7",
        "EXIT=1, then b'running'",
        "b'vm-dock-1\\n', exit b'143\\n'",
        "exit 125: vic-channel: this endpoint does not create containers",
    ):
        assert seen in out, (seen, out)
    assert re.search(r"exit 0 after \d+\.\d s, ExitCode b'137\\n'", out), out
