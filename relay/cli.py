"""``vic relay -c relay.toml [--check] [--log-level L] [--log-format F]``: the relay daemon.

``vic relay [-c relay.toml] route show|set`` talks to a running relay's admin
socket (relay.route_cli, relay.admin).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from common.ops.cliflags import add_daemon_flags, start_logging
from common.ops.config import ConfigError, config_path
from relay import route_cli

if TYPE_CHECKING:
    from pathlib import Path

    from relay.config import RelayConfig
    from relay.daemon import RelayDaemon

log = logging.getLogger("relay")


def configure(parser: argparse.ArgumentParser) -> None:
    add_daemon_flags(
        parser, "relay", config_help="relay TOML config file (default /etc/vic/relay.toml)"
    )
    sub = parser.add_subparsers(dest="relay_command", metavar="COMMAND")
    sub.required = False
    route_cli.add_placeholder(sub)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "relay_command", None) == "route":
        return route_cli.run(args)
    from common.io.preflight import cert_warnings, probe_hosts
    from relay.certreload import cert_keys
    from relay.config import load_config

    path = config_path(args.config, "relay")  # default /etc/vic/relay.toml
    cfg = load_config(path)  # ConfigError -> exit 2, one line (vic.cli)
    warnings = cert_warnings(cert_keys(cfg))  # own certificates and CAs
    if args.check:
        probe_hosts(cfg.bind_hosts())
        if cfg.peer is not None and cfg.peer.tls is not None:
            cfg.peer.tls.check_loads("peer.tls")
        for w in warnings:
            print(f"vic relay: warning: {w}", file=sys.stderr)
        print(f"{path}: ok ({len(cfg.listeners())} listeners, {len(cfg.egress)} egresses)")
        return 0
    start_logging(args, cfg.log_level)
    for w in warnings:
        log.warning("%s", w)
    return _serve(cfg, path)


def _serve(cfg: RelayConfig, path: Path) -> int:
    import trio

    from common.ops import runtime_tuning
    from common.ops.excgroups import first_of
    from relay.daemon import RelayDaemon

    runtime_tuning.tune_allocator()
    daemon = RelayDaemon(cfg, config_path=path)
    try:
        trio.run(_main, daemon)
    except BaseExceptionGroup as eg:
        # A listener that cannot bind at start-up is reported like a config error:
        # one line naming the listener, exit 2 (vic.cli prints it).
        err = first_of(eg, ConfigError)
        if err is not None:
            raise err from None
        raise
    return 0


async def _main(daemon: RelayDaemon) -> None:
    import trio

    from common.ops.daemon import watch_signals

    async with trio.open_nursery() as nursery:
        await nursery.start(watch_signals, daemon.reload, daemon.terminate)
        await nursery.start(daemon.run)
        await daemon.stopped.wait()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    """``python -m relay.cli``: ``vic relay`` without the ``vic`` command (which sits
    above the programs: it imports them, they do not import it)."""
    parser = argparse.ArgumentParser(prog="vic relay")
    configure(parser)
    try:
        return run(parser.parse_args(argv))
    except ConfigError as e:
        from common.ops.daemon import config_error_exit

        return config_error_exit(e, "vic relay")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
