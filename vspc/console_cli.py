"""``vic console``: list the appliance's consoles, attach to one (replay, then live).

    vic console list [--json] [--socket PATH | --tcp HOST:PORT --cert C --key K --ca CA]
    vic console attach <vm>[:<label>] [--mode rw|ro|exclusive] [--replay N] [--no-follow]
    vic console exec <vm> [-i] [-t] -- CMD...     (a tethered VM; exit code = CMD's)
    vic console logs <vm> [--tail N] [--since T] [-f] [-t]   (its container log)
    vic console rotate <vm>                       (a new session secret for it)

For a tethered VM (the appliance holds a session for it) ``attach`` with no label
attaches to its main process instead: stdout and stderr apart, resize, the same
detach key, and the process's exit code as ours when it ends.

``<vm>`` is a VC uuid (any spelling), the VM's display name, or a unique prefix of
either. On a terminal, attach switches it to raw mode and Ctrl-] detaches; with
plain stdin/stdout it just copies bytes (stdin EOF stops sending, output carries
on until the service closes the session). ``--no-follow`` prints the replay and
exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.ops.config import ConfigError, build
from common.proto.console import protocol as proto
from vspc.console.config import DEFAULT_SOCKET, ConsoleConfig
from vspc.sessions.cli import session_parsers

if TYPE_CHECKING:
    from vspc.console.client import Endpoint

ENV_SOCKET = "VIC_CONSOLE_SOCKET"


def configure(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("console endpoint")
    g.add_argument(
        "--config",
        type=Path,
        help="take the endpoint from this vSPC TOML file's [console] table",
    )
    g.add_argument(
        "--socket",
        type=Path,
        default=None,
        help=f"Unix socket of the console service (default ${ENV_SOCKET} or {DEFAULT_SOCKET})",
    )
    g.add_argument("--tcp", metavar="HOST:PORT", help="TCP endpoint with mutual TLS instead")
    g.add_argument("--cert", type=Path, help="client certificate (PEM) for --tcp")
    g.add_argument("--key", type=Path, help="client private key (PEM) for --tcp")
    g.add_argument("--ca", type=Path, help="CA that signed the service's certificate, for --tcp")
    g.add_argument(
        "--server-name", help="name to check in the service's certificate (default HOST)"
    )

    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    p_list = sub.add_parser("list", parents=[common], help="list consoles")
    p_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_att = sub.add_parser(
        "attach", parents=[common], help="attach to a console (tethered VM: its main process)"
    )
    p_att.add_argument(
        "target", metavar="VM[:LABEL]", help="uuid, name or unique prefix, optional :label"
    )
    p_att.add_argument("--label", help="port label (instead of VM:LABEL)")
    p_att.add_argument(
        "--mode", choices=proto.MODES, default="rw", help="rw (default), ro or exclusive"
    )
    p_att.add_argument(
        "--replay", type=int, default=0, metavar="N", help="first replay the last N bytes"
    )
    p_att.add_argument("--no-follow", action="store_true", help="print the replay, then exit")
    p_att.add_argument(
        "--no-notices",
        action="store_true",
        help="the VM's bytes only: no notice when it disconnects or reconnects",
    )
    p_att.add_argument(
        "--escape", default="^]", help="detach key on a terminal (default ^]; 'none')"
    )
    session_parsers(sub, common)


def _from_config(path: Path) -> ConsoleConfig:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError("--config", f"cannot read {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("--config", f"{path}: invalid TOML: {e}") from None
    return build(ConsoleConfig, data.get("console", {}), "console")


def endpoint_from_args(args: argparse.Namespace) -> Endpoint:
    from vspc.console.client import Endpoint

    cfg = _from_config(args.config) if getattr(args, "config", None) else None
    if cfg is not None and not args.socket and not args.tcp:
        if cfg.socket is not None:
            return Endpoint(socket=cfg.socket)
        if cfg.tcp is not None:
            args.tcp = f"{cfg.tcp.host}:{cfg.tcp.port}"
    if args.tcp:
        host, sep, port = str(args.tcp).rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError("--tcp", f"expected HOST:PORT, got {args.tcp!r}")
        for name in ("cert", "key", "ca"):
            if getattr(args, name) is None:
                raise ConfigError(f"--{name}", "required with --tcp")
        return Endpoint(
            host=host.strip("[]"),
            port=int(port),
            cert=args.cert,
            key=args.key,
            ca=args.ca,
            server_name=args.server_name,
        )
    sock = args.socket or Path(os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET)
    return Endpoint(socket=sock)


def parse_escape(text: str) -> int | None:
    if text.lower() == "none":
        return None
    if len(text) == 2 and text[0] == "^":
        code = ord(text[1].upper()) ^ 0x40
        if 0 <= code < 0x20 or code == 0x7F:
            return code
    raise ConfigError("--escape", f"expected ^X or none, got {text!r}")


def run(args: argparse.Namespace) -> int:
    """Only now the client, trio and TLS: ``--help`` and parsing stay light."""
    import trio

    from vspc.console_attach import run_attach
    from vspc.sessions.cli import run_session, session_attach

    ep = endpoint_from_args(args)
    if args.action == "list":
        return trio.run(_list, ep, bool(args.json))
    if args.action in ("exec", "logs", "rotate"):
        return run_session(ep, args)
    if args.replay < 0:
        raise ConfigError("--replay", "must be >= 0")
    escape = parse_escape(args.escape)
    if args.label is None and ":" not in args.target and not args.no_follow and not args.replay:
        code = session_attach(ep, args.target, read_only=args.mode == "ro", escape=escape)
        if code is not None:  # a tethered VM: its main process; else the raw console
            return code
    req = proto.AttachRequest(
        vm=args.target,
        label=args.label,
        mode=args.mode,
        replay=args.replay,
        notices=not args.no_notices,
    )
    return run_attach(ep, req, follow=not args.no_follow, escape=escape)


async def _list(ep: Endpoint, as_json: bool) -> int:
    from vspc.console.client import ConsoleClientError, list_consoles

    try:
        consoles = await list_consoles(ep)
    except ConsoleClientError as e:
        print(f"vic console: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(consoles, indent=2))
        return 0
    print(format_table(consoles))
    return 0


def format_table(consoles: list[dict[str, Any]]) -> str:
    """One row a console; one known only from its log files (its VM went away, or
    before a restart) is ``gone``, with the bytes its log files hold. ORIGIN is
    where the VM connection comes from (ESX host or relay host), LAST-SEEN ``now``
    while connected, ATTACHED the clients as ``MODE:PEER`` (``-`` for none, or when
    an older service does not say)."""
    rows = [HEADER]
    for c in consoles:
        connected = bool(c.get("connected"))
        rows.append(
            (
                str(c.get("uuid", "")),
                str(c.get("label", "")),
                str(c.get("display", "")),
                "yes" if connected else "gone" if "logged" in c else "no",
                str(c.get("origin") or "-"),
                "now" if connected else str(c.get("last_seen") or "-"),
                str(c.get("logged", c.get("bytes", 0))),
                str(c.get("clients", 0)),
                _attached(c.get("attached")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


HEADER = (
    "UUID",
    "LABEL",
    "DISPLAY",
    "CONNECTED",
    "ORIGIN",
    "LAST-SEEN",
    "BYTES",
    "CLIENTS",
    "ATTACHED",
)


def _attached(clients: object) -> str:
    if not isinstance(clients, list) or not clients:
        return "-"
    return ",".join(
        f"{c.get('mode', '?')}:{str(c.get('peer', '?')).replace(' ', '/')}"
        for c in clients
        if isinstance(c, dict)
    )
