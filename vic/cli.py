"""The one console script, ``vic``: a subcommand per deployable.

Each subcommand lives with the package that owns it and exposes
``configure(parser)`` and ``run(args) -> int``. Only the chosen subcommand's
module is imported (``vic --help`` lists them from ``SUBCOMMANDS``), so a
subcommand starts without paying for the others. A module that fails to import
leaves its subcommand listed but unavailable, with the reason.

To add a subcommand, add a line to ``SUBCOMMANDS``: name -> (module, help).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from common.ops.config import ConfigError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "vspc": ("vspc.cli", "run the appliance's virtual Serial Port Concentrator and endpoint"),
    "console": ("vspc.console_cli", "list, attach to and replay VM consoles"),
    "relay": ("relay.cli", "run the host-side relay daemon"),
    "certs": ("relay.certs_cli", "manage the cluster CA and peer certificates"),
    "agent": ("guestagent.cli", "run the in-guest tether agent"),
    "config": ("vic.config_cli", "print example configs and default config paths"),
    "lab": ("vic.lab.cli", "run the local lab: simulated hosts, VMs and appliance"),
}


class _VersionAction(argparse.Action):
    """``--version``: the version is looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit", **kw)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from common.ops.version import version

        print(f"vic {version()}")
        parser.exit()


def _load(modname: str) -> ModuleType | str:
    try:
        return importlib.import_module(modname)
    except ImportError as e:
        return f"unavailable: {e}"


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``: its first word that is not an option (``vic``
    itself takes no option with a value)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(
    argv: Sequence[str] | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, ModuleType | str]]:
    """The parser; only the subcommand chosen in ``argv`` (all of them when ``argv``
    is None) is imported and configured, the others are listed from the table."""
    parser = argparse.ArgumentParser(prog="vic", description="vic-channel control channel tools")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = set(SUBCOMMANDS) if argv is None else {chosen_command(argv)}
    modules: dict[str, ModuleType | str] = {}
    for name, (modname, help_text) in SUBCOMMANDS.items():
        if name not in wanted:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        mod = modules[name] = _load(modname)
        if isinstance(mod, str):
            sub.add_parser(name, help=f"{help_text} ({mod})")
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.configure(p)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, modules = build_parser(argv)
    args = parser.parse_args(argv)
    mod = modules[args.command]
    if isinstance(mod, str):
        print(f"vic {args.command}: {mod}", file=sys.stderr)
        return 1
    try:
        return int(mod.run(args) or 0)
    except ConfigError as e:
        from common.ops.daemon import config_error_exit

        return config_error_exit(e, f"vic {args.command}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
