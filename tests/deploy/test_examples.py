"""deploy/examples: each role's config passes ``vic <daemon> --check`` (its paths moved
under a tmp dir, its certificates made by ``vic certs``), and each is exactly what
``vic config example NAME`` prints (one source)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from common.ops import config as cfgmod
from guestagent.config import AgentConfig
from relay.config import load_config
from tests.support.vic_cli import REPO, VIC, run_vic
from vic.config_examples import EXAMPLES
from vspc.config import VspcConfig

EXAMPLES_DIR = REPO / "deploy" / "examples"


def vic(*args: str) -> subprocess.CompletedProcess[str]:
    exe = [str(VIC)] if VIC.exists() else [sys.executable, "-m", "vic.cli"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tmp tree standing for /etc/vic, /run/vic, /var/log/vic, /var/lib/vic, with the
    CA and the certificates the examples name."""
    tmp = tmp_path_factory.mktemp("deploy")
    etc = tmp / "etc"
    for args in (
        ("init",),
        ("issue", "--host", "esx-01"),
        ("issue", "--host", "esx-02"),
        ("issue", "--appliance", "vch"),
    ):
        r = vic("certs", *args, "--dir", str(etc))
        assert r.returncode == 0, r.stderr
    (etc / "vc.password").write_text("secret\n")
    return tmp


def moved(text: str, root: Path) -> str:
    """The example with its system paths under ``root``."""
    for system, local in (
        ("/etc/vic/", "etc/"),
        ("/run/vic/", "run/"),
        ("/var/log/vic/", "log/"),
        ("/var/lib/vic/", "lib/"),
    ):
        text = text.replace(f'"{system}', f'"{root / local}/')
    return text


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_deploy_example_is_the_printed_one(name: str) -> None:
    printed = vic("config", "example", name)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == EXAMPLES[name][1]
    assert (EXAMPLES_DIR / f"{name}.toml").read_text() == printed.stdout, (
        f"regenerate: vic config example {name} > deploy/examples/{name}.toml"
    )
    tomllib.loads(printed.stdout)  # valid TOML as printed, before any path is moved


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_passes_check(name: str, root: Path, tmp_path: Path) -> None:
    daemon, text = EXAMPLES[name]
    path = tmp_path / f"{daemon}.toml"
    path.write_text(moved(text, root))
    if daemon == "agent":
        cfg = cfgmod.load(AgentConfig, path)  # the loader `vic agent` runs on
        assert cfg.guestinfo.backend == "rpctool"
        assert cfg.console.transport in ("serial", "vsock")
        if "--check" not in vic("agent", "--help").stdout:
            return  # `vic agent --check` arrives with the unified flags
    r = run_vic(daemon, path, "--check")
    assert r.returncode == 0, r.stderr
    assert f"{path}: ok" in r.stdout
    assert r.stderr == "", r.stderr  # no warning either (certificates fresh)


def test_examples_load_with_the_daemons_loaders(root: Path) -> None:
    vspc = cfgmod.loads(VspcConfig, moved(EXAMPLES["vspc"][1], root))
    assert vspc.endpoint.relay_certificates()
    assert [ln.forwarded for ln in vspc.endpoint.link] == [True]
    for name in ("relay", "relay-appliance-host"):
        (root / f"{name}.toml").write_text(moved(EXAMPLES[name][1], root))
        relay = load_config(root / f"{name}.toml")
        assert relay.peer is not None and relay.peer.tls is not None
    host = load_config(root / "relay-appliance-host.toml")
    assert host.peer is not None and host.peer.listen[0].forward == "vsock:3:7444"
    agent = cfgmod.loads(AgentConfig, EXAMPLES["agent"][1])
    assert agent.session.enabled and agent.console.port == 2377


def test_a_broken_example_fails_check(root: Path, tmp_path: Path) -> None:
    """The check above can fail: a certificate the example names is missing."""
    path = tmp_path / "relay.toml"
    path.write_text(moved(EXAMPLES["relay"][1], root).replace("host-esx-01.key", "nope.key"))
    r = run_vic("relay", path, "--check")
    assert r.returncode == 2
    assert "peer.tls.key" in r.stderr
