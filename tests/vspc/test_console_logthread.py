"""The console log thread: jobs in order, results and errors back to the caller, and
a lower priority than the event loop's thread (Linux)."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import trio
import trio.testing

from vspc.console import logthread
from vspc.console.logthread import LogThread


async def test_jobs_run_in_order_in_one_thread_and_errors_come_back() -> None:
    t = LogThread()
    try:
        seen: list[int] = []
        async with trio.open_nursery() as n:
            for i in range(5):
                n.start_soon(t.run_sync, seen.append, i)
                await trio.testing.wait_all_tasks_blocked()
        assert seen == list(range(5))
        ids = {await t.run_sync(threading.get_native_id) for _ in range(3)}
        assert len(ids) == 1 and ids != {threading.get_native_id()}
        with pytest.raises(ZeroDivisionError):
            await t.run_sync(lambda: 1 // 0)
        assert await t.run_sync(int, "7") == 7  # still serving after an error
    finally:
        t.stop()


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priority is Linux's")
async def test_the_thread_is_nicer_than_the_event_loop() -> None:
    t = LogThread()
    try:
        mine = _nice()
        theirs = await t.run_sync(_nice)
        assert theirs == min(19, mine + logthread.NICE) and logthread.NICE > 0
        assert _nice() == mine  # the loop's thread keeps its own
    finally:
        t.stop()
