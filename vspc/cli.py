"""`vic vspc -c vspc.toml [--check] [--log-level L] [--log-format F]`: the appliance daemon
(vSPC, endpoint and consoles).

Signals: SIGHUP reloads the config (a bad new config is logged and the running
one kept); SIGTERM / SIGINT stop listening, give live connections up to
``--drain-seconds`` and exit. With ``$NOTIFY_SOCKET`` set it speaks sd_notify:
``READY=1`` (with ``STATUS=esx=<host>:<port> metrics=<port>``), ``RELOADING=1``
then ``READY=1`` around a reload, ``STOPPING=1`` on SIGTERM, and ``WATCHDOG=1``
when ``$WATCHDOG_USEC`` is set.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from common.ops import config as cfgmod
from common.ops.cliflags import add_daemon_flags, start_logging

if TYPE_CHECKING:
    from vspc.config import VspcConfig

log = logging.getLogger("vspc")

DRAIN_SECONDS = 10.0


def configure(parser: argparse.ArgumentParser) -> None:
    add_daemon_flags(
        parser, "vspc", config_help="vspc.toml (default /etc/vic/vspc.toml, else built-in)"
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=DRAIN_SECONDS,
        help="on SIGTERM, how long live connections may stay (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from common.io.preflight import cert_warnings, probe_hosts
    from vspc.certreload import cert_keys
    from vspc.defaults import load_vspc_config

    path, config = load_vspc_config(args.config)
    warnings = cert_warnings(cert_keys(config))  # own certificates and CAs
    _check_tls(config)
    if args.check:
        probe_hosts(config.bind_hosts())
        for w in warnings:
            print(f"vic vspc: warning: {w}", file=sys.stderr)
        print(f"{path or 'built-in defaults'}: ok")
        return 0
    start_logging(args, config.log_level)
    for w in warnings:
        log.warning("%s", w)
    return _serve(args, config)


def _serve(args: argparse.Namespace, config: VspcConfig) -> int:
    import trio

    from common.ops import excgroups, runtime_tuning

    runtime_tuning.tune_allocator()
    try:
        trio.run(serve, args.config, config, args.drain_seconds)
    except BaseExceptionGroup as eg:
        # A listener that cannot be opened at start-up is a configuration problem:
        # one line naming the key (vic.cli prints it, exit status 2).
        leaves = excgroups.leaves(eg)
        if leaves and all(isinstance(e, cfgmod.ConfigError) for e in leaves):
            raise leaves[0] from None
        raise
    return 0


def _check_tls(config: VspcConfig) -> None:
    """The server certificates load (ConfigError naming the table otherwise), before
    anything starts: ``validate`` only sees that the files exist."""
    for tls, key in ((config.listen.tls, "listen.tls"), (config.endpoint.tls, "endpoint.tls")):
        if tls is None:
            continue
        try:
            tls.context()
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            why = " ".join(str(e).split())
            raise cfgmod.ConfigError(key, f"cannot load the certificates: {why}") from None
    if config.endpoint.link_tls is not None:
        config.endpoint.link_tls.check_loads("endpoint.link-tls")


def _status(service: object) -> str:
    from vspc.service import VspcService

    assert isinstance(service, VspcService)
    lc = service.config.listen
    return f"STATUS=esx={lc.host}:{service.esx_port} metrics={service.metrics_port or '-'}"


async def serve(path: Path | None, config: VspcConfig, drain_seconds: float) -> None:
    import trio

    from common.ops import lifecycle, runtime_tuning
    from common.ops.daemon import watch_signals
    from common.ops.lifecycle import Lifecycle
    from vspc.defaults import load_vspc_config
    from vspc.endpoint import Endpoint
    from vspc.service import VspcService

    service = VspcService(config)
    life = Lifecycle()
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        endpoint = Endpoint(service)
        await nursery.start(endpoint.run)
        runtime_tuning.freeze_startup_objects()

        async def reload() -> None:
            with life.reloading(lambda: (_status(service),)):
                try:
                    new = load_vspc_config(path)[1]
                except cfgmod.ConfigError as e:
                    log.error("reload refused, keeping the running config: %s", e)
                    return
                await service.reload(new)
                try:
                    await endpoint.reload(service.config)
                except cfgmod.ConfigError as e:  # a listener that cannot be opened: logged
                    log.error("reload: %s", e)

        async def terminate() -> None:
            if not life.begin_drain():
                return
            log.info("draining (up to %.1fs)", drain_seconds)
            deadline = trio.current_time() + drain_seconds
            await endpoint.drain(deadline)
            await service.drain(deadline)
            log.info("stopped")
            nursery.cancel_scope.cancel()

        await nursery.start(watch_signals, reload, terminate)
        life.start_accepting()
        life.ready(_status(service))
        nursery.start_soon(lifecycle.watchdog)
