"""While a vSPC service runs, the cyclic GC makes no automatic full collections
(they walk every connection's objects); the thresholds come back afterwards."""

from __future__ import annotations

import gc
from pathlib import Path

import trio

from vspc.service import VspcService

from .conftest import make_config


async def test_automatic_full_collections_off_while_running(tmp_path: Path) -> None:
    before = gc.get_threshold()
    async with trio.open_nursery() as n:
        await n.start(VspcService(make_config(tmp_path / "a")).run)
        await n.start(VspcService(make_config(tmp_path / "b")).run)  # nested: shared
        t0, t1, t2 = gc.get_threshold()
        assert (t0, t1) == before[:2] and t2 >= 1 << 30
        n.cancel_scope.cancel()
    assert gc.get_threshold() == before
