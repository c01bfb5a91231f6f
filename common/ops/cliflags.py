"""The flags every daemon takes, and what they set up::

    -c/--config FILE   the TOML file (default /etc/vic/<daemon>.toml where one applies)
    --check            load and validate the config, probe what it binds, exit
    --log-level LEVEL  overrides the config's log-level
    --log-format text|json

``vic vspc``, ``vic relay`` and ``vic agent`` add them with ``add_daemon_flags`` and
start logging with ``start_logging``, so the three spell and behave the same.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.ops import logs


def add_daemon_flags(
    parser: argparse.ArgumentParser,
    daemon: str,
    *,
    config_required: bool = False,
    config_help: str = "",
) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        required=config_required,
        help=config_help or f"{daemon} TOML config file",
    )
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument(
        "--log-level",
        choices=logs.LEVELS,
        type=str.lower,
        default=None,
        help="override the config's log-level",
    )
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="text",
        help="text (default; journald priorities under systemd) or json (one object a line)",
    )


def start_logging(args: argparse.Namespace, config_level: str) -> None:
    """Logging as the flags say: ``--log-level`` over the config's level."""
    logs.setup(args.log_level or config_level, args.log_format)
