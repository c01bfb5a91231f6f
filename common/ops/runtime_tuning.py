"""Process-wide tuning for the daemons (called once at start-up).

Bytes flow through ``vic vspc`` and ``vic relay`` as the objects their reads
return (up to 256 KiB each): console bytes shared without copies by the log
queue, the ring and the clients' queues; relayed bytes kept for replay until
the peer acknowledges them, peer-link payloads received into buffers of their
own. With glibc's default, adaptive
thresholds such buffers keep landing on fresh pages: blocks above the mmap
threshold are mapped and unmapped per allocation, and the top of the heap is
given back to the kernel as soon as 2x that threshold is free, so every MiB
relayed costs hundreds of page faults (expensive on a VM guest). Fixing the
thresholds keeps buffers of a few MiB on the heap and keeps up to
``TRIM_THRESHOLD`` of free heap for reuse; memory that stays in use is
unaffected.

``gc.freeze()`` after start-up moves the objects created while importing and
configuring into the permanent generation, so the collector's periodic full
passes no longer walk them.

Both are best effort: on another C library, or if anything fails, nothing
changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

log = logging.getLogger("vic.ops.runtime_tuning")  # the name operators know

#: glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Allocations up to this size come from the heap, not from mmap.
MMAP_THRESHOLD = 4 << 20
#: Free memory kept at the top of the heap before it is returned to the kernel.
TRIM_THRESHOLD = 32 << 20


def tune_allocator() -> bool:
    """Fix glibc's malloc thresholds (see the module docstring); True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
            return False  # not glibc (musl has no tunable thresholds)
        ok: bool = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    except (OSError, AttributeError) as e:
        log.debug("malloc tuning not applied: %s", e)
        return False
    return ok


def freeze_startup_objects() -> None:
    """Collect once, then keep everything alive so far out of later collections."""
    gc.collect()
    gc.freeze()
