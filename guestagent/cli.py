"""``vic agent -c agent.toml [--check]``: run the in-guest tether agent."""

from __future__ import annotations

import argparse
import logging
import sys

from common.ops import config as config_mod
from common.ops.cliflags import add_daemon_flags, start_logging
from guestagent.config import AgentConfig

log = logging.getLogger("guestagent")


def configure(parser: argparse.ArgumentParser) -> None:
    add_daemon_flags(parser, "agent", config_help="agent TOML file (default /etc/vic/agent.toml)")


async def _main(cfg: AgentConfig) -> int:
    import trio

    from common.ops.daemon import stop_signal
    from guestagent.agent import Agent

    agent = Agent(cfg)
    async with trio.open_nursery() as n:
        await n.start(agent.run)

        async def on_signals() -> None:
            log.info("agent: %s, stopping", (await stop_signal()).name)
            n.cancel_scope.cancel()

        n.start_soon(on_signals)
        if cfg.agent.exit_when_done:
            await agent.all_done.wait()
            n.cancel_scope.cancel()
    return 0


def run(args: argparse.Namespace) -> int:
    path = config_mod.config_path(args.config, "agent")  # default /etc/vic/agent.toml
    cfg = config_mod.load(AgentConfig, path)
    if args.check:
        print(f"{path}: ok")
        return 0
    start_logging(args, cfg.agent.log_level)
    import trio

    return trio.run(_main, cfg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vic agent")
    configure(p)
    try:
        return run(p.parse_args(argv))
    except config_mod.ConfigError as e:
        from common.ops.daemon import config_error_exit

        return config_error_exit(e, "vic agent")


if __name__ == "__main__":
    sys.exit(main())
