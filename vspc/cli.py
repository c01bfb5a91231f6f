"""`vic vspc --config vspc.toml`: the appliance's vSPC, endpoint and consoles."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import trio

from vic.ops import config as cfgmod
from vic.ops import logs, sdnotify
from vic.ops.daemon import watch_signals
from vspc.config import VspcConfig

log = logging.getLogger("vspc")

DRAIN_SECONDS = 10.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, required=True, help="vspc.toml")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument("--drain-seconds", type=float, default=DRAIN_SECONDS)


def run(args: argparse.Namespace) -> int:
    config = cfgmod.load(VspcConfig, args.config)
    if args.check:
        print(f"{args.config}: ok")
        return 0
    logs.setup(config.log_level)
    trio.run(serve, args.config, config, args.drain_seconds)
    return 0


async def serve(path: Path, config: VspcConfig, drain_seconds: float) -> None:
    from vspc.endpoint import Endpoint
    from vspc.service import VspcService

    service = VspcService(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        endpoint = Endpoint(service)
        await nursery.start(endpoint.run)

        async def reload() -> None:
            sdnotify.reloading()
            try:
                new = cfgmod.load(VspcConfig, path)
            except cfgmod.ConfigError as e:
                log.error("reload refused, keeping the running config: %s", e)
            else:
                await service.reload(new)
                await endpoint.reload(new)
            sdnotify.ready()

        async def terminate() -> None:
            sdnotify.stopping()
            log.info("draining (up to %.1fs)", drain_seconds)
            deadline = trio.current_time() + drain_seconds
            await endpoint.drain(deadline)
            await service.drain(deadline)
            nursery.cancel_scope.deadline = deadline + 1.0

        await nursery.start(watch_signals, reload, terminate)
        sdnotify.ready()
        nursery.start_soon(_watchdog)


async def _watchdog() -> None:
    interval = sdnotify.watchdog_interval()
    if interval is None:
        return
    while True:
        sdnotify.watchdog()
        await trio.sleep(interval)
