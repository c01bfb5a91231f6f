"""The one console script, ``vic``: a subcommand per deployable.

Each subcommand lives with the package that owns it and exposes
``configure(parser)`` and ``run(args) -> int``. A module that fails to import
leaves its subcommand listed but unavailable, with the reason.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from common.ops.config import ConfigError
from common.ops.daemon import config_error_exit

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "vspc": ("vspc.cli", "run the appliance's virtual Serial Port Concentrator and endpoint"),
    "console": ("vspc.console_cli", "list, attach to and replay VM consoles"),
    "relay": ("relay.cli", "run the host-side relay daemon"),
    "certs": ("relay.certs_cli", "manage the cluster CA and peer certificates"),
    "agent": ("guestagent.cli", "run the in-guest tether agent"),
    "config": ("vic.config_cli", "print example configs and default config paths"),
    "lab": ("vic.lab.cli", "run the local lab: simulated hosts, VMs and appliance"),
}


def _load(modname: str) -> ModuleType | str:
    try:
        return importlib.import_module(modname)
    except ImportError as e:
        return f"unavailable: {e}"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType | str]]:
    parser = argparse.ArgumentParser(prog="vic", description="vic-channel control channel tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules: dict[str, ModuleType | str] = {}
    for name, (modname, help_text) in SUBCOMMANDS.items():
        mod = _load(modname)
        modules[name] = mod
        if isinstance(mod, str):
            sub.add_parser(name, help=f"{help_text} ({mod})")
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.configure(p)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    mod = modules[args.command]
    if isinstance(mod, str):
        print(f"vic {args.command}: {mod}", file=sys.stderr)
        return 1
    try:
        return int(mod.run(args) or 0)
    except ConfigError as e:
        return config_error_exit(e, f"vic {args.command}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
