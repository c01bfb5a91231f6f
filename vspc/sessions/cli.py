"""The session actions of ``vic console`` (``vspc.console_cli``): exec, logs,
rotate, and attach to a tethered VM's main process."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from common.ops.config import ConfigError
from common.proto.console import protocol as proto

if TYPE_CHECKING:
    from vspc.console.client import Endpoint


def session_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p_exec = sub.add_parser("exec", parents=[common], help="run a command in a tethered VM")
    p_exec.add_argument("target", metavar="VM")
    p_exec.add_argument("-i", "--interactive", action="store_true", help="send stdin")
    p_exec.add_argument("-t", "--tty", action="store_true", help="a pty; raw local terminal")
    p_exec.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="end CMD after this long (exit 124)"
    )
    p_exec.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    p_logs = sub.add_parser("logs", parents=[common], help="a tethered VM's container log")
    p_logs.add_argument("target", metavar="VM")
    p_logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    p_logs.add_argument("--since", metavar="T", help="epoch, RFC3339, or 10s/5m/2h/1d ago")
    p_logs.add_argument("-f", "--follow", action="store_true", help="then follow")
    p_logs.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    p_rot = sub.add_parser("rotate", parents=[common], help="a new session secret for a VM")
    p_rot.add_argument("target", metavar="VM")


_FLAGS = {"-i": "i", "--interactive": "i", "-t": "t", "--tty": "t", "-it": "it", "-ti": "it"}


def _exec_flags(args: argparse.Namespace) -> list[str]:
    """``VM [-i] [-t] [--timeout S] -- CMD...``: flags after VM (argparse leaves them
    in the remainder) up to ``--``, then the command."""
    rest: list[str] = list(args.argv)
    while rest and (rest[0] in _FLAGS or rest[0].startswith("--timeout")):
        flag = rest.pop(0)
        if flag in _FLAGS:
            args.interactive |= "i" in _FLAGS[flag]
            args.tty |= "t" in _FLAGS[flag]
            continue
        value = flag.partition("=")[2] if "=" in flag else (rest.pop(0) if rest else "")
        args.timeout = _seconds(value)
    if args.timeout is not None and not 0 < args.timeout <= 4_000_000:
        raise ConfigError("--timeout", "must be 0 < SECONDS <= 4000000")
    return rest[1:] if rest[:1] == ["--"] else rest


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError("--timeout", f"expected seconds, got {text!r}") from None


def run_session(ep: Endpoint, args: argparse.Namespace) -> int:
    import trio

    from vspc.sessions import client

    if args.action == "rotate":
        return trio.run(_rotate, ep, args.target)
    if args.action == "exec":
        argv = _exec_flags(args)
        if not argv:
            raise ConfigError("CMD", "exec needs a command after --")
        req = client.exec_request(args.target, argv, args.interactive, args.tty, args.timeout)
        return client.run_exec(ep, req)
    if args.tail is not None and args.tail < 0:
        raise ConfigError("--tail", "must be >= 0")
    try:
        since = None if args.since is None else client.parse_since(args.since, time.time())
    except ValueError:
        raise ConfigError(
            "--since", f"expected epoch, RFC3339 or 10m-style, got {args.since!r}"
        ) from None
    logs = proto.LogsRequest(args.target, args.tail, since, args.follow, args.timestamps)
    return trio.run(client.run_logs, ep, logs)


async def _rotate(ep: Endpoint, vm: str) -> int:
    import trio

    from vspc.console.client import ConsoleClientError
    from vspc.sessions import client

    try:
        stream, _ = await client._open(ep, proto.RotateRequest(vm))
    except ConsoleClientError as e:
        print(f"vic console: {e}", file=sys.stderr)
        return 1
    await trio.aclose_forcefully(stream)
    print(f"vic console: {vm}: session secret rotated", file=sys.stderr)
    return 0


def session_attach(ep: Endpoint, vm: str, *, read_only: bool, escape: int | None) -> int | None:
    """Attach to ``vm``'s main process; None when it has no session (take the raw console)."""
    from vspc.sessions.attach_client import run_attach

    return run_attach(ep, vm, read_only=read_only, escape=escape)
