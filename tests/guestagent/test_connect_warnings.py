"""The agent's console link: a connect failure is a WARNING once, DEBUG while it
keeps failing, and a WARNING again after it has connected in between."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from guestagent.channels import Channel
from guestagent.console import ConsoleLink


async def test_console_connect_failure_warns_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="guestagent")
    plan = ["fail", "fail", "fail", "ok", "fail", "fail", "park"]
    done = trio.Event()

    async def connector() -> Channel:
        step = plan.pop(0)
        if step == "fail":
            raise OSError(111, "Connection refused")
        if step == "park":
            done.set()
            await trio.sleep_forever()
        a, b = trio.testing.memory_stream_pair()
        await b.aclose()  # the appliance hangs up at once: the link connects again
        return Channel(a, "mem")

    link = ConsoleLink(connector, buffer_limit=1024, backoff_min=0.001)
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            await n.start(link.run)
            await done.wait()
            n.cancel_scope.cancel()
    levels = [r.levelno for r in caplog.records if "connect failed" in r.getMessage()]
    W, D = logging.WARNING, logging.DEBUG
    assert levels == [W, D, D, W, D]
