"""common.io.pipepool: the kernel pipes of the splice fast path."""

from __future__ import annotations

import os

from common.io.pipepool import PipePool


def test_pipe_pool_sizes_reuses_and_drops_dirty_pipes() -> None:
    pool = PipePool(size=1 << 20, max_idle=1)
    p1 = pool.acquire()
    assert p1.size >= 64 * 1024  # 1 MiB where the kernel allows it, the default otherwise
    pool.release(p1)
    assert pool.acquire() is p1  # reused
    os.write(p1.w, b"left over")
    pool.release(p1)  # holds data: closed, never handed out again
    assert pool.idle == 0 and p1.r == -1
    p2, p3 = pool.acquire(), pool.acquire()
    pool.release(p2)
    pool.release(p3)  # over max_idle: closed
    assert pool.idle == 1 and pool.in_use == 0
    pool.close()
    assert pool.idle == 0
