"""``vic relay --config relay.toml [--check]``: the host-side relay daemon.

``vic relay route show|set`` talks to a running relay's admin socket (relay.admin).
"""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from common.io.preflight import cert_warnings, probe_hosts
from common.ops import logs, runtime_tuning
from common.ops.config import ConfigError
from common.ops.daemon import config_error_exit, watch_signals
from common.ops.excgroups import first_of
from relay.certreload import cert_keys
from relay.config import load_config
from relay.daemon import RelayDaemon

log = logging.getLogger("relay")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="relay TOML config file (required to run the daemon)")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument("--log-level", default=None, help="override the config's log-level")
    try:
        from relay.admin import add_route_cli
    except ImportError:  # pragma: no cover - the admin tools are optional here
        return
    sub = parser.add_subparsers(dest="relay_command", metavar="COMMAND")
    sub.required = False
    add_route_cli(sub)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "relay_command", None) == "route":
        from relay.admin import run_route_cli

        return run_route_cli(args)
    if not args.config:
        raise ConfigError("config", "--config FILE is required")
    cfg = load_config(args.config)  # ConfigError -> exit 2, one line (vic.cli)
    warnings = cert_warnings(cert_keys(cfg))  # own certificates and CAs
    if args.check:
        probe_hosts(cfg.bind_hosts())
        if cfg.peer is not None and cfg.peer.tls is not None:
            cfg.peer.tls.check_loads("peer.tls")
        for w in warnings:
            print(f"vic relay: warning: {w}", file=sys.stderr)
        print(f"{args.config}: ok ({len(cfg.listeners())} listeners, {len(cfg.egress)} egresses)")
        return 0
    logs.setup(args.log_level or cfg.log_level)
    for w in warnings:
        log.warning("%s", w)
    runtime_tuning.tune_allocator()
    daemon = RelayDaemon(cfg, config_path=args.config)
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
        return config_error_exit(e, "vic relay")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
