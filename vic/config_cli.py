"""``vic config example NAME``: a full commented config for one deployed role
(``vspc``, ``relay``, ``relay-appliance-host``, ``agent``), ready for
``/etc/vic/<daemon>.toml``; ``vic config path DAEMON``: where the daemon looks
when no ``--config`` is given."""

from __future__ import annotations

import argparse
import sys

from common.ops.config import default_config_path
from vic.config_examples import EXAMPLES

DAEMONS = ("vspc", "relay", "agent")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("example", help="print a commented example config")
    p.add_argument("name", choices=sorted(EXAMPLES), help="the role")
    p = sub.add_parser("path", help="print the config file a daemon reads by default")
    p.add_argument("daemon", choices=DAEMONS)


def run(args: argparse.Namespace) -> int:
    if args.config_command == "example":
        sys.stdout.write(EXAMPLES[args.name][1])
    else:
        print(default_config_path(args.daemon))
    return 0
