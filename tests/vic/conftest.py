"""Fixtures shared by tests/vic (the ESX simulator's tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio


@pytest.fixture
async def listener() -> AsyncIterator[trio.SocketListener]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    yield listeners[0]
    await listeners[0].aclose()
