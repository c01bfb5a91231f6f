"""Fixtures of the hostile suite (see tests/daemons.py and appliance.py)."""

from __future__ import annotations

import resource
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.hostile.appliance import Vspc, start_vspc


@pytest.fixture(autouse=True, scope="session")
def _many_fds() -> None:
    """The slowloris test holds ~1,000 sockets on each side: raise the soft limit
    (the daemons inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@pytest.fixture
async def vspc(tmp_path: Path) -> AsyncIterator[Vspc]:
    """A `vic vspc` on the README's minimal config, moved to loopback."""
    async with start_vspc(tmp_path) as v:
        yield v
