"""Exec: a new process beside the container's, with its stdio for the wire protocol.

``start_exec(spec, reaper=..., container_pid=...)`` starts it and returns an
``ExecProcess``: write/close stdin, read STDOUT and STDERR (tty off: pipes) or TTY
(tty on: one pty master), resize, signal, wait. Like every child of the agent it is
spawned through the ``Reaper`` (which reaps everything) and reported once.

Each exec leads its own session and process group (``setsid``; with a tty, the pty
is its controlling terminal); no agent fd reaches it (``close_fds``). With
``container_pid`` it is born in that process's pid namespace and enters its other
namespaces, cgroups and root before exec (``containerns``); its environment and
working directory default to that process's. Memory is bounded: reads return at
most ``max_bytes`` straight from the fd, writes wait for the pipe (backpressure);
nothing is queued here.

A timeout counts from the start and is enforced by ``wait()`` (which the caller
must await to learn the exit anyway): SIGKILL to the process group, ``timed_out``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal as _signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import trio

from common.ops.wiretext import wire
from guestagent import containerns, ptyio
from guestagent.execspec import (
    ExecSpec,
    ExecStartError,
    ExitStatus,
    StdinClosed,
    Stream,
)
from guestagent.execuser import Credentials, resolve_user
from guestagent.reaper import Child, Reaper
from guestagent.session import DEFAULT_PATH

log = logging.getLogger(__name__)

READ_DEFAULT = 64 * 1024  # one read() unless asked for less or more
READ_MAX = 1024 * 1024  # ceiling for one read()
_REASON_MAX = 4096


class ExecProcess:
    """A running (or finished) exec. One reader per stream at a time."""

    def __init__(self, spec: ExecSpec, child: Child, stdin: int, outputs: dict[Stream, int]):
        self.spec = spec
        self.pid = child.pid  # also its process group and session id
        self._child = child
        self._out = {s: trio.lowlevel.FdStream(fd) for s, fd in outputs.items()}
        self._master = outputs.get(Stream.TTY)
        self._pipe_in = trio.lowlevel.FdStream(stdin) if self._master is None else None
        # where stdin goes; None once closed
        self._stdin: trio.lowlevel.FdStream | None = self._pipe_in or self._out[Stream.TTY]
        self._deadline = trio.current_time() + spec.timeout if spec.timeout else None
        self._timed_out = False
        self._status: ExitStatus | None = None

    @property
    def streams(self) -> tuple[Stream, ...]:
        return tuple(self._out)

    @property
    def status(self) -> ExitStatus | None:
        """The exit status once ``wait()`` has returned it, else None."""
        return self._status

    # -- stdin -----------------------------------------------------------------------

    async def write_stdin(self, data: bytes) -> None:
        """Write all of ``data``; waits while the pipe/pty is full. Raises
        ``StdinClosed`` after ``close_stdin`` or once nothing reads stdin any more."""
        s = self._stdin
        if s is None:
            raise StdinClosed("stdin is closed")
        try:
            await s.send_all(data)
        except trio.BrokenResourceError:
            raise StdinClosed("the process no longer reads its stdin") from None
        except trio.ClosedResourceError:
            raise StdinClosed("stdin is closed") from None

    async def close_stdin(self) -> None:
        """End of input. Pipes: closed. Tty: the terminal's EOF character (^D) is
        sent, which ends input for a reader in canonical mode; the pty stays open."""
        s, self._stdin = self._stdin, None
        if s is None:
            return
        if self._master is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await s.send_all(ptyio.eof_char(self._master))
            return
        self._pipe_in = None
        await s.aclose()

    # -- output ----------------------------------------------------------------------

    async def read(self, stream: Stream, max_bytes: int = READ_DEFAULT) -> bytes:
        """Up to ``max_bytes`` (at most ``READ_MAX``) of ``stream``; b"" at its end."""
        s = self._out.get(stream)
        if s is None:
            raise ValueError(f"{stream.name} is not a stream of this exec ({self._kind()})")
        n = max(1, min(max_bytes, READ_MAX))
        if self._master is not None:
            return await ptyio.receive_pty(s, n)
        return await s.receive_some(n)

    def _kind(self) -> str:
        return "tty" if self._master is not None else "pipes"

    # -- control ---------------------------------------------------------------------

    def resize(self, rows: int, cols: int) -> None:
        """New window size (TIOCSWINSZ on the pty; SIGWINCH to the foreground group)."""
        if self._master is None:
            raise ValueError("resize needs a tty exec")
        for name, n in (("rows", rows), ("cols", cols)):
            if not 0 < n <= 0xFFFF:
                raise ValueError(f"{name} must be 1..65535, not {n}")
        if self._child.status is None:
            ptyio.resize(self._master, rows, cols, self.pid)

    def signal(self, signo: int) -> None:
        """Send ``signo`` to the exec's process (not its group); no-op once it is gone."""
        if not 0 < signo < _signal.NSIG:
            raise ValueError(f"bad signal number {signo}")
        self._child.send_signal(signo)

    async def wait(self) -> ExitStatus:
        """Its exit status (reaped once by the reaper). Past the timeout, the process
        group is killed with SIGKILL and the status says ``timed_out``."""
        if self._status is not None:
            return self._status
        if self._deadline is not None:
            with trio.move_on_at(self._deadline):
                await self._child.wait()
            if self._child.status is None:
                self._timed_out = True
                log.info(
                    "exec %d: timeout after %ss, killing its group", self.pid, self.spec.timeout
                )
                self._child.send_signal(_signal.SIGKILL, group=True)
        st = await self._child.wait()
        self._status = ExitStatus.from_reaped(st, timed_out=self._timed_out)
        return self._status

    def kill(self) -> None:
        """SIGKILL to the exec's whole process group (no-op once it is reaped)."""
        self._child.send_signal(_signal.SIGKILL, group=True)

    async def aclose(self) -> None:
        """Release the fds (reads then raise ``trio.ClosedResourceError``). A process
        still running has its group killed: close a main process (attach) only after
        ``wait()``. The reaper reaps it in any case."""
        self.kill()
        pipe_in, self._pipe_in, self._stdin = self._pipe_in, None, None
        with trio.CancelScope(shield=True):
            for s in [*self._out.values(), *([pipe_in] if pipe_in else [])]:
                await s.aclose()

    async def __aenter__(self) -> ExecProcess:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# -- start -------------------------------------------------------------------------------


@dataclass
class _ChildPlan:
    """What the child does between fork and exec, in this order."""

    tty: bool
    target: containerns.Target | None
    creds: Credentials | None
    cwd: str | None  # None: the target's (already entered) or "/"
    err_fd: int  # close-on-exec; the reason of a failure is written here

    def __call__(self) -> None:  # pragma: no cover - runs in the child
        try:
            if self.tty:
                _labelled("controlling terminal", ptyio.take_controlling_tty)
            if self.target is not None:
                self.target.enter()
            if self.creds is not None:
                c = self.creds
                _labelled("user", os.setgroups, list(c.groups))
                _labelled("user", os.setgid, c.gid)
                _labelled("user", os.setuid, c.uid)
            if self.cwd is not None or self.target is None:
                _labelled(f"working directory {self.cwd or '/'}", os.chdir, self.cwd or "/")
        except OSError as e:
            with contextlib.suppress(OSError):
                os.write(self.err_fd, f"{e.filename}: {e.strerror}".encode()[:_REASON_MAX])
            raise


def _labelled(what: str, fn: Callable[..., object], *args: object) -> None:  # pragma: no cover
    try:
        fn(*args)
    except OSError as e:
        raise OSError(e.errno, e.strerror, what) from None


def exec_env(
    spec: ExecSpec, base: dict[str, str] | None, creds: Credentials | None
) -> dict[str, str]:
    """The container's environment (or none), overridden by the spec's, plus defaults."""
    env = dict(base or {})
    env.update(spec.env)
    env.setdefault("PATH", DEFAULT_PATH)
    if spec.tty:
        env.setdefault("TERM", "xterm")
    if creds is not None and creds.home:
        env.setdefault("HOME", creds.home)
    return env


def _exec_failure_text(spec: ExecSpec, e: OSError) -> str:
    what = e.strerror or str(e)
    if e.errno == errno.ENOMEM and e.filename is None:
        return f"cannot start {spec.program}: {what} (is the container's pid 1 gone?)"
    return f"cannot run {spec.program}: {what}"


async def start_exec(
    spec: ExecSpec, *, reaper: Reaper, container_pid: int | None = None
) -> ExecProcess:
    """Start ``spec``; raises ``ExecStartError`` (with the reason) if it cannot run."""
    target = containerns.open_target(container_pid) if container_pid is not None else None
    try:
        root = f"/proc/{container_pid}/root" if container_pid is not None else "/"
        creds = resolve_user(spec.user, root)
        env = exec_env(spec, target.env if target is not None else None, creds)
        if target is not None and spec.cwd is not None:
            target.drop_cwd()
        return _spawn(spec, reaper, target, creds, env)
    finally:
        if target is not None:
            target.close()


def _child_fds(spec: ExecSpec) -> tuple[list[int], int, dict[Stream, int]]:
    """(the child's stdin/stdout/stderr, our stdin end, our output ends by stream);
    every fd is close-on-exec (Popen dup2s the child's onto 0-2)."""
    if spec.tty:
        master, slave = ptyio.open_pty(spec.rows, spec.cols)
        return [slave, slave, slave], master, {Stream.TTY: master}
    fds: list[int] = []
    try:
        for _ in range(3):
            fds.extend(os.pipe2(os.O_CLOEXEC))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    in_r, in_w, out_r, out_w, err_r, err_w = fds
    return [in_r, out_w, err_w], in_w, {Stream.STDOUT: out_r, Stream.STDERR: err_r}


def _spawn(
    spec: ExecSpec,
    reaper: Reaper,
    target: containerns.Target | None,
    creds: Credentials | None,
    env: dict[str, str],
) -> ExecProcess:
    reason_r, reason_w = os.pipe2(os.O_CLOEXEC)
    try:
        theirs, stdin, outputs = _child_fds(spec)
    except BaseException:
        _close_all({reason_r, reason_w})
        raise
    ours = {stdin, *outputs.values()}
    plan = _ChildPlan(spec.tty, target, creds, spec.cwd, reason_w)
    try:
        with containerns.children_in(target.pid_ns if target else None):
            child = reaper.spawn(
                list(spec.argv),
                stdin=theirs[0],
                stdout=theirs[1],
                stderr=theirs[2],
                executable=spec.program,
                env=env,
                start_new_session=True,
                close_fds=True,
                preexec_fn=plan,
            )
    except OSError as e:
        _close_all(ours)
        raise ExecStartError(_exec_failure_text(spec, e)) from None
    except subprocess.SubprocessError:
        _close_all(ours)
        os.close(reason_w)
        reason_w = -1
        why = os.read(reason_r, _REASON_MAX).decode("utf-8", "replace") or "setup failed"
        raise ExecStartError(f"cannot start {spec.program}: {why}") from None
    except BaseException:
        _close_all(ours)
        raise
    finally:
        _close_all({*theirs, reason_r, reason_w} - {-1})
    log.info("exec %d started: %s", child.pid, wire(" ".join(spec.argv)))
    return ExecProcess(spec, child, stdin, outputs)


def _close_all(fds: set[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
