"""Shared daemon plumbing: config errors as exit 2, signal handling for reload and drain."""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from common.ops.config import ConfigError

EXIT_CONFIG = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def config_error_exit(err: ConfigError, prog: str = "vic") -> int:
    """Print one line naming the key, return exit status 2."""
    print(f"{prog}: config error: {err}", file=sys.stderr)
    return EXIT_CONFIG


async def watch_signals(
    on_reload: Callable[[], Awaitable[Any]],
    on_terminate: Callable[[], Awaitable[Any]],
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call on_reload for SIGHUP, on_terminate for SIGTERM/SIGINT (then return)."""
    with trio.open_signal_receiver(signal.SIGHUP, *STOP_SIGNALS) as sigs:
        task_status.started()
        async for signum in sigs:
            if signum == signal.SIGHUP:
                await on_reload()
            else:
                await on_terminate()
                return


async def stop_signal() -> signal.Signals:
    """Wait for SIGTERM or SIGINT (a daemon that only stops: no reload)."""
    with trio.open_signal_receiver(*STOP_SIGNALS) as sigs:
        async for signum in sigs:
            return signal.Signals(signum)
    raise AssertionError("the signal receiver ended")  # pragma: no cover
