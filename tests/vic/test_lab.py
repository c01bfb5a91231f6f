"""`vic lab` runs end to end and every console is byte-exact."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAB = [sys.executable, "-m", "vic.cli", "lab"]
WIDTH = 100  # the lab's output fits a terminal this wide


def _fits(out: str) -> None:
    wide = [ln for ln in out.splitlines() if len(ln) > WIDTH]
    assert not wide, wide


def _records(lines: list[str], prefix: str) -> dict[str, list[str]]:
    """Each table row starting with ``prefix``, with the lines it wraps onto and the notes
    under it (the lines indented below it), by its first word; a second row for the same
    name is kept under ``name#2`` and so on."""
    out: dict[str, list[str]] = {}
    key = ""
    for ln in lines:
        if ln.startswith(prefix):
            name = ln.split()[0]
            key = name
            n = 1
            while key in out:
                n += 1
                key = f"{name}#{n}"
            out[key] = [ln]
        elif key and ln.startswith(" "):
            out[key].append(ln)
        else:
            key = ""
    return out


def _text(record: list[str]) -> str:
    """A record's words in one line: wrapped cells and notes read whole."""
    return " ".join(" ".join(record).split())


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
    _fits(out)
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
    records = _records(out.splitlines(), "vm-agent-")
    rows = {vm: r[0] for vm, r in records.items()}
    text = {vm: _text(r) for vm, r in records.items()}
    assert set(rows) == {"vm-agent-1", "vm-agent-2", "vm-agent-3", "vm-agent-dhcp"}, rows
    for vm in ("vm-agent-1", "vm-agent-2", "vm-agent-3"):
        assert rows[vm].rstrip().endswith("  OK"), rows[vm]
        # (other tests may add interfaces of their own to this host meanwhile: the
        # agent publishes those too, between eth0 and "started")
        assert "guestinfo: address eth0 192.0.2.2,fd00::2; " in text[vm], text[vm]
        assert "; started: " in text[vm], text[vm]
    # exit status 3, after reading the line the appliance typed into the console
    assert re.search(r"hybrid vsock +3 +\d", rows["vm-agent-1"]), rows["vm-agent-1"]
    assert "started: started" in text["vm-agent-1"], text["vm-agent-1"]
    assert "the process read it from its stdin" in text["vm-agent-1"]
    # the tty session waited for the SIGTERM the appliance asked for: 128 + 15, with the name
    assert "asked for SIGTERM through guestinfo (request 1); the guest acked it" in out
    assert re.search(r"\) +143 \(SIGTERM\) +\d", rows["vm-agent-2"]), rows["vm-agent-2"]
    # a command that does not exist: `started` carries the error text the user sees
    assert (
        "started: cannot run /opt/vic-lab/no-such-command: No such file or directory"
        in text["vm-agent-3"]
    ), text["vm-agent-3"]
    assert "the agent stayed up" in text["vm-agent-3"]
    # each console complete: n/n bytes, and equal to what the session printed
    for vm in ("vm-agent-1", "vm-agent-2"):
        m = re.search(r" (\d+)/(\d+) ", rows[vm])
        assert m and m[1] == m[2] and int(m[2]) > 0, rows[vm]
    dhcp = rows["vm-agent-dhcp"]
    assert dhcp.rstrip().endswith("  OK") or "SKIPPED" in dhcp, dhcp
    if "SKIPPED" not in dhcp:
        assert re.search(r"address public 10\.213\.91\.\d+;", text["vm-agent-dhcp"]), text


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
    _fits(out)
    assert "== VMs running the guest agent" not in out  # only the scenario asked for
    _check_sessions_table(out)


def _check_sessions_table(out: str) -> None:
    head = "== A tethered VM: vic console exec / logs"
    assert head in out
    lines = out[out.index(head) :].split("\nmetrics: ")[0].split("\n== ")[0].splitlines()[1:]
    records = _records(lines, "vm-")
    assert sum(r.startswith("vm-sess-1") for r in records) == 3, out
    assert "stdout b'out\\n', stderr b'err\\n', exit 3" in out
    assert "b'two\\nthree\\n', exit 0" in out
    assert re.search(r"(\d+)/\1 bytes, exit 0, every line once, in order", out), out
    # vMotion esx-a -> esx-b mid exec -i: every line once both ways; esx-a refused after
    assert sum(r.startswith("vm-vmo-1") for r in records) == 2, out
    assert re.search(r"(\d+)/\1 bytes, exit 7, moved at line \d+, every line once", out), out
    assert "refused (not on 'esx-a'); exec: b'still here\\n', exit 0" in out, out
    assert len(records) == 5 and sum(len(r) for r in records.values()) == len(lines), lines
    assert all(len(r) <= WIDTH for r in lines), lines
    assert all(sum(ln.endswith("  OK") for ln in r) == 1 for r in records.values()), lines


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
    _fits(out)
    assert "== A tethered VM" not in out  # only the scenario asked for
    _check_docker_table(out)


def _check_docker_table(out: str) -> None:
    head = "== The docker client against the appliance's Docker endpoint"
    assert head in out, out
    if f"{head} (tethered VMs)\n   skipped: no docker client" in out:
        return  # no docker binary here: said so, and the lab still passes
    lines = out[out.index(head) :].split("\nmetrics: ")[0].splitlines()[1:]
    records = _records(lines, "vm-dock-")
    names = {k.split("#")[0] for k in records}
    assert len(records) == 15 and names == {"vm-dock-1", "vm-dock-tty", "vm-dock-exit"}, lines
    assert sum(len(r) for r in records.values()) == len(lines), lines
    assert all(sum(ln.endswith("  OK") for ln in r) == 1 for r in records.values()), lines
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


def test_lab_tables_wrap_long_cells_to_the_width() -> None:
    """The table layout itself: long cells wrap in their column, a row's first line holds the
    start of every cell, a cell too long is cut with "...", and nothing is wider than 100
    columns, even when the columns kept whole are too wide on their own."""
    from vic.lab import report

    words = " ".join(f"word{i}" for i in range(200))
    rows = [("VM", "path", "sent", "result"), ("vm-1", words, "12", "OK: every byte once")]
    header, row = report.columns(rows, wrapped={1}, right={2})
    assert header[0].split() == ["VM", "path", "sent", "result"]
    assert row[0].startswith("vm-1  word0 ") and row[0].endswith("12  OK: every byte once")
    assert len(row) == report.MAX_LINES and row[-1].endswith(" ...")
    assert all(len(ln) <= WIDTH for ln in header + row)
    wide = [("a", "b"), ("x" * 80, "y" * 80)]
    assert all(len(ln) <= WIDTH for r in report.columns(wide, wrapped=()) for ln in r)
    note = report.note(words, 10)
    assert note[0].startswith(" " * 10 + "- word0") and note[1].startswith(" " * 12 + "word")
    assert all(len(ln) <= WIDTH for ln in note + report.paragraph("== " + words, indent=3))
