"""Child processes with PID 1 semantics.

In a containerVM the agent is PID 1: every orphan in the VM becomes its child and
must be reaped, or zombies pile up. ``Reaper`` waits for SIGCHLD and reaps *any*
child (``waitpid(-1, WNOHANG)`` until none is left); exit statuses of processes
it spawned are handed to whoever waits for them, the rest are logged. Outside
PID 1 it can make the agent a child subreaper (``PR_SET_CHILD_SUBREAPER``) so the
same holds for the agent's descendants.

Because it reaps everything, every process the agent starts must be started
through ``Reaper.spawn`` (``Reaper.run_capture`` for short helper commands such as
``vmware-rpctool``); trio's own process API would race with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper() -> bool:
    """Make this process reap orphaned descendants (Linux >= 3.4). True on success."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except OSError:  # pragma: no cover
        return False


@dataclass(frozen=True)
class ExitStatus:
    """``code`` is the exit code, or 128+N after death by signal N (shell convention)."""

    code: int
    signal: int | None

    @classmethod
    def from_wait_status(cls, st: int) -> ExitStatus:
        if os.WIFSIGNALED(st):
            sig = os.WTERMSIG(st)
            return cls(128 + sig, sig)
        if os.WIFEXITED(st):
            return cls(os.WEXITSTATUS(st), None)
        return cls(255, None)  # pragma: no cover - stopped/continued are not reported

    @property
    def signal_name(self) -> str:
        if self.signal is None:
            return ""
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"SIG{self.signal}"


class Child:
    """A process started by the reaper."""

    def __init__(self, popen: subprocess.Popen[bytes], reaper: Reaper) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._reaper = reaper
        self._done = trio.Event()
        self.status: ExitStatus | None = None

    def _exited(self, st: int) -> None:
        self.status = ExitStatus.from_wait_status(st)
        code = os.waitstatus_to_exitcode(st)
        self.popen.returncode = code  # keeps Popen from waiting or warning itself
        self._done.set()

    async def wait(self) -> ExitStatus:
        await self._done.wait()
        assert self.status is not None
        return self.status

    def send_signal(self, sig: int, *, group: bool = False) -> None:
        if self.status is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)


class Reaper:
    def __init__(self) -> None:
        self._children: dict[int, Child] = {}
        self._early: dict[int, int] = {}
        self.orphans_reaped = 0
        self._orphan = trio.Event()
        self._running = False

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Reap until cancelled. Start with ``nursery.start(reaper.run)``."""
        with trio.open_signal_receiver(signal.SIGCHLD) as sigs:
            self._running = True
            try:
                self.reap()
                task_status.started()
                async for _ in sigs:
                    self.reap()
            finally:
                self._running = False

    def reap(self) -> None:
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:  # pragma: no cover
                continue
            if pid == 0:
                return
            child = self._children.pop(pid, None)
            if child is not None:
                child._exited(st)
            else:
                self.orphans_reaped += 1
                self._orphan.set()
                self._orphan = trio.Event()
                log.debug("reaped orphan %d (status %#x)", pid, st)

    async def wait_orphans(self, n: int) -> None:
        """Wait until ``n`` processes not spawned here have been reaped."""
        while self.orphans_reaped < n:
            await self._orphan.wait()

    def spawn(self, argv: Sequence[str], **popen_kwargs: Any) -> Child:
        """``subprocess.Popen`` under the reaper. Raises OSError if the exec fails."""
        if not self._running:
            raise RuntimeError("Reaper.run() is not running")
        p = subprocess.Popen(list(argv), **popen_kwargs)
        child = Child(p, self)
        self._children[p.pid] = child
        # it may already be gone, reaped by nobody yet: next SIGCHLD reaps it; and
        # reap now in case the signal was coalesced with an earlier one
        self.reap()
        return child

    async def run_capture(self, argv: Sequence[str]) -> tuple[int, bytes, bytes]:
        """Run a short helper command, returning (exit code, stdout, stderr)."""
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        try:
            child = self.spawn(
                argv, stdin=subprocess.DEVNULL, stdout=w_out, stderr=w_err, close_fds=True
            )
        except BaseException:
            for fd in (r_out, w_out, r_err, w_err):
                os.close(fd)
            raise
        os.close(w_out)
        os.close(w_err)
        outs: list[bytes] = [b"", b""]

        async def slurp(fd: int, i: int) -> None:
            async with trio.lowlevel.FdStream(fd) as s:
                buf = bytearray()
                while chunk := await s.receive_some(65536):
                    buf += chunk
                outs[i] = bytes(buf)

        async with trio.open_nursery() as n:
            n.start_soon(slurp, r_out, 0)
            n.start_soon(slurp, r_err, 1)
        st = await child.wait()
        return st.code, outs[0], outs[1]
