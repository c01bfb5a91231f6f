"""A connect failure is a WARNING once, then DEBUG while it keeps failing (not an
INFO line every retry); connecting again re-arms the warning."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from relay.config import TcpListener
from relay.ingress import Backoff
from relay.ingress.tcp import _client
from tests.support.daemons import free_port


class _CountingBackoff(Backoff):
    def __init__(self, tries: int) -> None:
        super().__init__(0.001, 0.001)
        self.left = tries
        self.done = trio.Event()

    def next_delay(self) -> float:
        self.left -= 1
        if self.left <= 0:
            self.done.set()
        return super().next_delay()


class _Sink:
    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff

    async def dispatch(self, stream: Any, origin: Any, track: bool = False) -> None:
        raise AssertionError("nothing listens: no connection to dispatch")

    async def refuse(self, stream: Any, origin: Any, reason: str) -> None:
        raise AssertionError("not reached")

    def backoff(self) -> Backoff:
        return self._backoff


async def test_tcp_client_connect_failure_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="relay")
    cfg = TcpListener(name="com1", vm="vm-a", mode="client", port=free_port())
    backoff = _CountingBackoff(4)
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            await n.start(_client, cfg, _Sink(backoff))
            await backoff.done.wait()
            n.cancel_scope.cancel()
    failures = [r for r in caplog.records if "connect to" in r.getMessage()]
    assert len(failures) >= 4
    assert [r.levelno for r in failures[:4]] == [logging.WARNING] + [logging.DEBUG] * 3
    assert "route=com1 vm=vm-a" in failures[0].getMessage()
