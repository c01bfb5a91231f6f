"""One long-lived thread for the console log writer's blocking work.

``trio.to_thread.run_sync`` costs a thread-cache hand-off, a capacity limiter,
a context copy and two thread renames per call; the log writer makes one call
per batch, back to back while a VM writes in bulk. ``LogThread.run_sync`` runs
the jobs in order in one thread that lives while the writer runs: a queue put
to start a job, one ``run_sync_soon`` to report back.

Like ``trio.to_thread.run_sync`` (not abandonable): a cancelled caller still
waits for its job to finish; the result or exception is returned or raised.

The thread runs at a lower priority (``NICE``, Linux: per thread) than the event
loop's: on a busy machine the loop (console reads, vMotion answers) goes first
and the disk writes fill its gaps; the bounded log queues keep them from
falling behind for long (a full queue makes the VM side wait, and the loop
then idles and leaves the CPU to the writes).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

import outcome
import trio

T = TypeVar("T")

_Job = Callable[[], None]
#: How much nicer than the rest of the process the thread runs (0: as nice).
NICE = 5


class LogThread:
    __slots__ = ("_jobs", "_name", "_thread")

    def __init__(self, name: str = "vspc-log-writer") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] | None = None
        self._thread: threading.Thread | None = None

    async def run_sync(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` in the thread (after the jobs before it); its result."""
        jobs = self._jobs
        if jobs is None:
            jobs = self._jobs = queue.SimpleQueue()
            self._thread = threading.Thread(
                target=_serve, args=(jobs,), name=self._name, daemon=True
            )
            self._thread.start()
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[outcome.Outcome[T]] = []

        def job() -> None:
            box.append(outcome.capture(fn, *args))
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        jobs.put(job)
        with trio.CancelScope(shield=True):
            await done.wait()
        return box[0].unwrap()

    def stop(self) -> None:
        """Let the thread end once its queued jobs are done (a later call starts a new one)."""
        if self._jobs is not None:
            self._jobs.put(None)
            self._jobs = None
            self._thread = None


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    if NICE:
        with contextlib.suppress(OSError, AttributeError):  # (not Linux: as nice)
            me = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, me, os.getpriority(os.PRIO_PROCESS, me) + NICE)
    while (job := jobs.get()) is not None:
        job()
