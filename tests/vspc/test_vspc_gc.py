"""The vSPC's cyclic-GC policy: no automatic full collections while a service
runs (they walk every connection's objects), what is alive is frozen every
GC_FREEZE_INTERVAL (young collections stay small), and a full collection (which
also finds frozen cyclic garbage) every GC_FULL_INTERVAL. Thresholds and frozen
objects come back afterwards."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import trio

from vspc import gcpolicy
from vspc.service import VspcService

from .conftest import make_config


class _Node:
    me: object = None


def _tracked_somewhere(obj: object) -> bool:
    return any(o is obj for g in range(3) for o in gc.get_objects(g))


async def test_automatic_full_collections_off_while_running(tmp_path: Path) -> None:
    before = gc.get_threshold()
    async with trio.open_nursery() as n:
        await n.start(VspcService(make_config(tmp_path / "a")).run)
        await n.start(VspcService(make_config(tmp_path / "b")).run)  # nested: shared
        t0, t1, t2 = gc.get_threshold()
        assert (t0, t1) == before[:2] and t2 >= 1 << 30
        n.cancel_scope.cancel()
    assert gc.get_threshold() == before


async def test_live_objects_are_frozen_and_cycles_found_by_the_full_pass(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gcpolicy, "GC_FULL_INTERVAL", 10.0)
    async with trio.open_nursery() as n:
        await n.start(VspcService(make_config(tmp_path)).run)
        alive = [object()]
        node = _Node()
        node.me = node  # a cycle: only the cyclic GC can free it
        dead = weakref.ref(node)
        await trio.sleep(1.0)
        assert not _tracked_somewhere(alive)  # frozen: no collection walks it
        assert not _tracked_somewhere(node)
        del node
        gc.collect()
        assert dead() is not None  # frozen garbage waits for the full pass
        await trio.sleep(10.0)
        assert dead() is None  # the full pass found it
        n.cancel_scope.cancel()
    assert gc.get_freeze_count() == 0 and _tracked_somewhere(alive)
