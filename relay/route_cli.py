"""``vic relay [-c relay.toml] route show|set ...``: the CLI side of the admin socket.

The socket comes from ``--admin-socket``, else from the config's
``[peer] admin-socket`` (``-c FILE``, default ``/etc/vic/relay.toml``), else
``/run/vic/relay.sock``. ``route show`` prints a table, or the admin reply with
``--json``. The route parser itself is ``relay.admin.add_route_cli``; it is
built only when ``route`` is chosen (``relay.admin`` costs half a second of imports).
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

from common.ops.config import ConfigError, default_config_path

FALLBACK_SOCKET = "/run/vic/relay.sock"
ROUTE_HELP = "show or change routes of a running relay"


def add_placeholder(sub: Any) -> None:
    """``route`` in ``vic relay --help`` without importing the admin module."""
    # no option prefix: every word after "route" (even --help) goes to the real parser
    p = sub.add_parser("route", help=ROUTE_HELP, add_help=False, prefix_chars="\0")
    p.add_argument("route_args", nargs="*")


def route_parser() -> argparse.ArgumentParser:
    from relay.admin import add_route_cli

    parser = argparse.ArgumentParser(prog="vic relay", add_help=False)
    sub = parser.add_subparsers(dest="relay_command", metavar="COMMAND")
    add_route_cli(sub, default_socket="")
    actions = sub.choices["route"]._subparsers
    assert actions is not None
    for action in actions._group_actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, p in action.choices.items():
            p.add_argument("-c", "--config", type=Path, help="relay config naming the socket")
            if name == "show":
                p.add_argument("--json", action="store_true", help="the admin reply as JSON")
    return parser


def admin_socket(explicit: str, config: Path | None) -> str:
    """The admin socket: the flag, else the config's, else the fallback."""
    if explicit:
        return explicit
    path = config or default_config_path("relay")
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if config is not None:
            raise ConfigError("--config", f"cannot read {path}: no such file") from None
        return FALLBACK_SOCKET
    except OSError as e:
        raise ConfigError("--config", f"cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("--config", f"{path}: invalid TOML: {e}") from None
    peer = data.get("peer")
    sock = peer.get("admin-socket") if isinstance(peer, dict) else None
    return str(sock) if isinstance(sock, str) and sock else FALLBACK_SOCKET


def run(args: argparse.Namespace) -> int:
    rest = list(args.route_args)
    parsed = route_parser().parse_args(["route", *rest])
    config = parsed.config or args.config
    parsed.admin_socket = admin_socket(parsed.admin_socket, config)
    if parsed.route_command == "show":
        return _show(parsed)
    from relay.admin import run_route_cli

    return run_route_cli(parsed)


def _show(args: argparse.Namespace) -> int:
    from relay.admin import request_or_say

    reply = request_or_say(args.admin_socket, {"cmd": "route.show"})
    if reply is None:
        return 1
    print(json.dumps(reply, indent=2) if args.json else format_routes(reply.get("routes", {})))
    return 0


def _link(r: dict[str, Any]) -> str:
    link = r.get("link")
    if not isinstance(link, dict):
        return "-"
    return f"{link.get('peer') or 'plaintext'} ({'up' if link.get('alive') else 'down'})"


def format_routes(routes: dict[str, dict[str, Any]]) -> str:
    """One row a route: ROUTE ADDRESS TLS IDENTITY LINK STREAMS [SOURCE]."""
    head = ["ROUTE", "ADDRESS", "TLS", "IDENTITY", "LINK", "STREAMS"]
    sourced = any("source" in r for r in routes.values())
    rows = [[*head, "SOURCE"] if sourced else head]
    for name in sorted(routes):
        r = routes[name]
        row = [
            name,
            str(r.get("address", "")),
            "yes" if r.get("tls") else "no",
            str(r.get("identity") or "-"),
            _link(r),
            str(r.get("streams", 0)),
        ]
        rows.append([*row, str(r.get("source", "-"))] if sourced else row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)
