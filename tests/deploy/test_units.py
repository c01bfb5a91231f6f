"""deploy/systemd: the units carry what the daemons need (sd_notify with reload and
watchdog, the directories the example configs name, a hardening floor), and
``systemd-analyze verify`` accepts them when it is installed (Debian: systemd)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from common.ops.config import default_config_path
from tests.support.vic_cli import REPO, VIC
from vic.config_examples import EXAMPLES

UNITS = REPO / "deploy" / "systemd"
DAEMONS = ("vspc", "relay")
Unit = dict[str, list[str]]  # "Section.Key" -> values in order


def parse_unit(text: str) -> Unit:
    out: Unit = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def unit(name: str) -> Unit:
    return parse_unit((UNITS / f"vic-{name}.service").read_text())


REQUIRED = {
    "Service.Type": "notify-reload",
    "Service.NotifyAccess": "main",
    "Service.NoNewPrivileges": "yes",
    "Service.CapabilityBoundingSet": "",
    "Service.ProtectSystem": "strict",
    "Service.ProtectHome": "yes",
    "Service.PrivateTmp": "yes",
    "Service.SystemCallFilter": "@system-service",
    "Service.RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_VSOCK",
    "Service.RuntimeDirectory": "vic",
    "Service.User": "vic",
    "Service.RestartPreventExitStatus": "2",
    "Install.WantedBy": "multi-user.target",
}


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_has_the_required_keys(daemon: str) -> None:
    u = unit(daemon)
    for key, value in REQUIRED.items():
        assert value in u.get(key, []), f"vic-{daemon}.service: {key}={value}"
    assert "Service.ExecReload" not in u  # notify-reload sends SIGHUP itself
    watchdog = u["Service.WatchdogSec"][0]
    assert re.fullmatch(r"\d+s", watchdog) and int(watchdog[:-1]) >= 10
    exec_start = u["Service.ExecStart"][0].split()
    assert exec_start[1:] == [daemon, "--config", str(default_config_path(daemon))]


def _covered(path: str, u: Unit) -> bool:
    """A system path the example config names is one of the unit's own directories."""
    for root, key in (
        ("/run/", "RuntimeDirectory"),
        ("/var/log/", "LogsDirectory"),
        ("/var/lib/", "StateDirectory"),
        ("/etc/", "ConfigurationDirectory"),
    ):
        if path.startswith(root):
            names = " ".join(u.get(f"Service.{key}", [])).split()
            rel = path[len(root) :]
            return any(rel == n or rel.startswith(f"{n}/") for n in names)
    return True  # devices, vsock: not files of the unit


@pytest.mark.parametrize("name", ["vspc", "relay", "relay-appliance-host"])
def test_example_paths_are_unit_directories(name: str) -> None:
    daemon, text = EXAMPLES[name]
    u = unit(daemon)
    active = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    paths = re.findall(r'"(/(?:run|var|etc)/[^"]+)"', active)
    assert paths, "the example names no system path"
    for p in paths:
        assert _covered(p, u), f"{name}: {p} is outside vic-{daemon}.service's directories"
    if daemon == "vspc":  # the daemon's own directories, for dirs it writes into
        logs = u["Service.LogsDirectory"][0].split()
        assert {"vic/consoles", "vic/containers"} <= set(logs)


def _systemd_version() -> int:
    out = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True)
    m = re.match(r"systemd (\d+)", out.stdout)
    return int(m.group(1)) if m else 0


def _installable(src: Path, version: int) -> str:
    """The unit as verify should see it here: this venv's vic, and the compat drop-in
    merged in when systemd predates Type=notify-reload (253)."""
    text = src.read_text().replace("/usr/local/bin/vic", str(VIC))
    if version < 253 and "Type=notify-reload" in text:
        compat = parse_unit((UNITS / "notify-reload-compat.conf").read_text())
        lines = [f"{k.split('.', 1)[1]}={v}" for k, vs in compat.items() for v in vs]
        text = text.replace("Type=notify-reload", "\n".join(lines))
    return text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.skipif(not VIC.exists(), reason="verify checks ExecStart: needs .venv/bin/vic")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    version = _systemd_version()
    for src in sorted(UNITS.glob("*.service")):
        (tmp_path / src.name).write_text(_installable(src, version))
    files = sorted(str(p) for p in tmp_path.glob("*.service"))
    r = subprocess.run(["systemd-analyze", "verify", *files], capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    if version < 250:  # no --offline security scoring
        return
    for daemon in DAEMONS:
        r = subprocess.run(
            [
                "systemd-analyze",
                "security",
                "--offline=yes",
                str(tmp_path / f"vic-{daemon}.service"),
            ],
            capture_output=True,
            text=True,
        )
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
        assert m is not None, r.stdout[-500:]
        assert float(m.group(1)) <= 2.5, r.stdout[-2000:]  # "OK": hardening not lost


def test_a_missing_key_is_found() -> None:
    """The parser test can fail: a unit without its watchdog."""
    text = (UNITS / "vic-vspc.service").read_text().replace("WatchdogSec=30s\n", "")
    assert "Service.WatchdogSec" not in parse_unit(text)
