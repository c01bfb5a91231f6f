"""``vic``: the same daemon flags everywhere, ``--version``, and a sub-command that
imports only its own module (start time: the import set, not a wall clock)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.ops.version import version
from tests.support.vic_cli import REPO, vic
from vic import cli

DAEMONS = ("vspc", "relay", "agent")


def test_version_is_the_package_version() -> None:
    r = vic("--version")
    assert r.returncode == 0 and r.stdout == f"vic {version()}\n"
    assert version()[0].isdigit() and version() != "0+unknown"


def test_help_lists_every_subcommand_from_the_table() -> None:
    r = vic("--help")
    assert r.returncode == 0
    for name, (_, help_text) in cli.SUBCOMMANDS.items():
        assert name in r.stdout and help_text.split()[0] in r.stdout


@pytest.mark.parametrize("daemon", DAEMONS)
def test_every_daemon_has_the_same_flags(daemon: str) -> None:
    parser, _ = cli.build_parser([daemon])
    args = parser.parse_args(
        [daemon, "-c", "x.toml", "--check", "--log-level", "WARNING", "--log-format", "json"]
    )
    assert (args.config, args.check, args.log_level, args.log_format) == (
        Path("x.toml"),
        True,
        "warning",
        "json",
    )
    long = parser.parse_args([daemon, "--config", "y.toml"])
    assert (long.config, long.check, long.log_level, long.log_format) == (
        Path("y.toml"),
        False,
        None,
        "text",
    )
    with pytest.raises(SystemExit):
        parser.parse_args([daemon, "-c", "x", "--log-format", "xml"])


def test_agent_check(tmp_path: Path) -> None:
    good, bad = tmp_path / "agent.toml", tmp_path / "bad.toml"
    good.write_text(f'[guestinfo]\nbackend = "file"\npath = "{tmp_path / "gi.json"}"\n')
    bad.write_text("[agent]\nbogus = 1\n")
    r = vic("agent", "-c", str(good), "--check")
    assert r.returncode == 0 and r.stdout == f"{good}: ok\n", r.stderr
    r = vic("agent", "--check", "--config", str(bad))
    assert r.returncode == 2 and "agent.bogus" in r.stderr


HEAVY = (
    "trio",
    "ssl",
    "cryptography",
    "pyVmomi",
    "prometheus_client",
    "common.io",
    "common.link",
    "relay.admin",
    "relay.daemon",
    "vspc.service",
    "vspc.console.client",
    "vspc.console.service",
    "guestagent.agent",
)

_PROBE = """
import json, sys
from vic import cli
parser, _ = cli.build_parser(sys.argv[1:])
try:
    parser.parse_args(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize(
    ("argv", "own"),
    [
        (["agent", "--help"], "guestagent.cli"),
        (["relay", "--help"], "relay.cli"),
        (["vspc", "--help"], "vspc.cli"),
        (["console", "list", "--help"], "vspc.console_cli"),
        (["--help"], "vic.cli"),
    ],
)
def test_parsing_imports_only_the_chosen_subcommand(argv: list[str], own: str) -> None:
    """``vic X --help`` imports X's CLI module and nothing heavy: no trio, TLS,
    vSphere or metrics, no other program (0.5 s of imports before, see the report)."""
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, cwd=REPO
    )
    assert r.returncode == 0, r.stderr
    mods = json.loads(r.stdout.splitlines()[-1])
    assert own in mods
    heavy = [m for m in mods if m.startswith(HEAVY)]
    assert not heavy, heavy
    others = {"vspc", "relay", "guestagent", "vic.lab"} - {own.split(".")[0]}
    assert not [m for m in mods if m.split(".")[0] in others or m.startswith("vic.lab")]
