"""The vSPC's cyclic-GC policy while a service runs: no automatic full collections,
what is alive is frozen often, and a full collection runs rarely, when no vMotion
is pending (see GC_FREEZE_INTERVAL)."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from vspc.core.switchboard import Switchboard

log = logging.getLogger("vspc")

#: The cyclic GC with thousands of connections (16,000 VMs: ~1M tracked objects):
#:
#: * Python starts a full collection whenever a quarter more objects reached its
#:   oldest generation (with console traffic, every few tens of seconds) and one
#:   walks every object of every connection: ~0.5-1 s with the loop stalled.
#: * A young collection starts when allocations outnumber deallocations by 700.
#:   Each console line replaces a connection's wait-for-the-next-read objects (trio's
#:   await chain, the last event, ...) with new ones that live until the next line:
#:   old objects die as many young ones are born, so that count stays low while
#:   the young generation grows by ~20k objects a second, until some burst starts
#:   a collection that walks all of them (0.1-0.4 s seen at 16k VMs).
#:
#: So while a service runs, automatic full collections are off and every
#: GC_FREEZE_INTERVAL everything alive is moved to the permanent generation
#: (``gc.freeze()``: a list splice, no walk), so a young collection never has more
#: than that interval's survivors to walk. Objects still die by reference counting
#: as usual; only cyclic garbage older than the interval waits for the full
#: collection run every GC_FULL_INTERVAL (``unfreeze``, ``collect``, ``freeze``), at a
#: moment no vMotion is pending (waiting at most GC_QUIET_WAIT for one). The
#: service makes next to no cyclic garbage while running (connections torn down by
#: errors or a drain make some).
GC_FREEZE_INTERVAL = 0.05
GC_FULL_INTERVAL = 3600.0
GC_QUIET_WAIT = 60.0
_GC_NEVER = 1 << 30
_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


@contextmanager
def gc_policy() -> Iterator[None]:
    """Process-wide while any service runs (nested services share it); on the way
    out of the last one the thresholds come back and frozen objects are unfrozen."""
    global _gc_users, _gc_saved
    if _gc_users == 0:
        _gc_saved = gc.get_threshold()
        t0, t1, _t2 = _gc_saved
        gc.set_threshold(t0, t1, _GC_NEVER)
    _gc_users += 1
    try:
        yield
    finally:
        _gc_users -= 1
        if _gc_users == 0 and _gc_saved is not None:
            gc.set_threshold(*_gc_saved)
            _gc_saved = None
            gc.unfreeze()


async def gc_loop(board: Switchboard) -> None:
    """Freeze what is alive every GC_FREEZE_INTERVAL; a full collection every
    GC_FULL_INTERVAL (see GC_FREEZE_INTERVAL)."""
    full_at = trio.current_time() + GC_FULL_INTERVAL
    while True:
        await trio.sleep(GC_FREEZE_INTERVAL)
        now = trio.current_time()
        if now >= full_at and (now >= full_at + GC_QUIET_WAIT or not board.pending_vmotions()):
            t0 = time.perf_counter()
            gc.unfreeze()
            found = gc.collect()
            log.info(
                "full GC: %d unreachable objects, %.0f ms",
                found,
                (time.perf_counter() - t0) * 1e3,
            )
            full_at = now + GC_FULL_INTERVAL
        gc.freeze()
