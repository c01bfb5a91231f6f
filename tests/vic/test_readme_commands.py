"""Every ``vic`` command the README shows parses as written (placeholders filled
in): the spelling an operator copies is the one the CLI takes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vic import cli

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
# the README's words (line breaks folded), then the argv that stands for them
COMMANDS: dict[str, list[str]] = {
    "vic console list": ["console", "list"],
    "vic console attach vm-esx-1": ["console", "attach", "vm-esx-1"],
    "vic console exec vm-agent-1 -- uname -a": [
        *("console", "exec", "vm-agent-1", "--", "uname", "-a"),
    ],
    "vic console logs vm-agent-1": ["console", "logs", "vm-agent-1"],
    "vic console rotate VM": ["console", "rotate", "vm"],
    "vic vspc -c vspc.toml": ["vspc", "-c", "vspc.toml"],
    "vic relay -c relay.toml": ["relay", "-c", "relay.toml"],
    "vic agent -c agent.toml": ["agent", "-c", "agent.toml"],
    "vic certs init --dir /etc/vic/ca": ["certs", "init", "--dir", "/etc/vic/ca"],
    "vic certs issue host esx-01": ["certs", "issue", "host", "esx-01"],
    "vic certs renew /etc/vic/host-esx-01.crt": ["certs", "renew", "/etc/vic/host-esx-01.crt"],
    "vic certs revoke /etc/vic/host-esx-03.crt": ["certs", "revoke", "/etc/vic/host-esx-03.crt"],
    "vic config example vspc|relay|relay-appliance-host|agent": ["config", "example", "relay"],
    "attach <vm>[:<label>] [--mode rw|ro|exclusive] [--replay N]": [
        *("console", "attach", "vm:com1", "--mode", "exclusive", "--replay", "100"),
    ],
    "vic certs init --dir <ca-dir>": ["certs", "init", "--dir", "pki"],
    "vic certs issue --dir <ca-dir> --host <name>": [
        *("certs", "issue", "--dir", "pki", "--host", "esx-01"),
    ],
    "vic relay route set --address tcp:10.0.0.13:7443 --identity vic://host/esx-03": [
        *("relay", "route", "set", "--address", "tcp:10.0.0.13:7443"),
        *("--identity", "vic://host/esx-03"),
    ],
    "vic relay route show|set": ["relay", "route", "show"],
    "vic relay --check": ["relay", "-c", "relay.toml", "--check"],
    "vic vspc --check": ["vspc", "-c", "vspc.toml", "--check"],
}


def _folded(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("words", sorted(COMMANDS))
def test_readme_command_parses(words: str) -> None:
    assert words in _folded(README), f"README no longer shows {words!r}"
    argv = COMMANDS[words]
    parser, modules = cli.build_parser(argv)
    args = parser.parse_args(argv)
    assert args.command == argv[0] and not isinstance(modules[argv[0]], str)
    if argv[:2] == ["relay", "route"]:  # the route words are parsed when it runs
        from relay import route_cli

        assert route_cli.route_parser().parse_args(["route", *argv[2:]]).route_command
