"""Run one session: wait for the go-ahead if asked, launch, carry the console, report.

Order of publication: ``detail.starttime`` then ``started`` (``true`` or the
launch error text); on exit, all of the process's output is read to EOF, the
console link is flushed, and only then ``detail.stoptime``, ``detail.signal`` and
``status``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pty
import signal
import struct
import subprocess
import termios
from dataclasses import dataclass

import trio

from common.io.guestinfo.base import BackendError, GuestBackend
from common.ops.wiretext import wire
from common.proto import guestinfo as gi
from guestagent.console import ConsoleLink
from guestagent.publisher import Publisher
from guestagent.reaper import Child, ExitStatus, Reaper

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READ_CHUNK = 1024 * 1024
PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = 1031


def _grow_pipe(fd: int) -> None:
    """Fewer, larger reads: ask for a 1 MiB pipe (best effort)."""
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


@dataclass(frozen=True)
class SessionOptions:
    # after exit, stop waiting for output EOF once the output has been idle this long
    # (a grandchild holding it open); never while output is still flowing
    drain_grace: float = 2.0
    flush_timeout: float = 300.0  # publish the status anyway after this long
    signal_group: bool = False  # signal the process group instead of the process


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _set_ctty() -> None:  # pragma: no cover - runs in the child between fork and exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def launch_error_text(cfg: gi.SessionConfig, e: BaseException) -> str:
    if isinstance(e, OSError):
        what = e.strerror or str(e)
        fname = e.filename if e.filename is not None else cfg.path
        if cfg.dir and fname == cfg.dir:
            return f"cannot change to working directory {cfg.dir}: {what}"
        return f"cannot run {fname}: {what}"
    return f"cannot run {cfg.path}: {e}"


def signal_number(name: str) -> int:
    n = name.strip().upper()
    if n.isascii() and n.isdigit() and 0 < int(n) < signal.NSIG:
        return int(n)
    if not n.startswith("SIG"):
        n = "SIG" + n
    try:
        return int(signal.Signals[n])
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


class SessionRunner:
    def __init__(
        self,
        cfg: gi.SessionConfig,
        *,
        reaper: Reaper,
        publisher: Publisher,
        backend: GuestBackend,
        console: ConsoleLink | None,
        options: SessionOptions | None = None,
    ) -> None:
        self.cfg = cfg
        self.reaper = reaper
        self.publisher = publisher
        self.backend = backend
        self.console = console
        self.options = options or SessionOptions()
        self.child: Child | None = None
        self.status: ExitStatus | None = None
        self.output_bytes = 0
        self.launched = trio.Event()
        self.exited = trio.Event()  # the process is gone (its output may not be)
        self._stdin: trio.lowlevel.FdStream | None = None
        self._pty: int | None = None  # the pty master of a tty process
        self._reading = False
        self._last_progress = 0.0

    # -- launch ------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in self.cfg.env:
            k, _, v = item.partition("=")
            env[k] = v
        env.setdefault("PATH", DEFAULT_PATH)
        if self.cfg.tty:
            env.setdefault("TERM", "xterm")
        return env

    def _spawn(self) -> tuple[Child, int, int | None, int | None]:
        """Start the process; returns (child, output fd, stderr fd or None, stdin fd or None).

        stderr gets its own pipe only when the console keeps it apart (the session's
        attach); the raw console gets stdout and stderr merged, as always."""
        cfg = self.cfg
        common = dict(
            executable=cfg.path,
            env=self._env(),
            cwd=cfg.dir or "/",
            start_new_session=True,
            close_fds=True,
        )
        if cfg.tty:
            master, slave = pty.openpty()
            try:
                if self.console is not None and self.console.initial_size is not None:
                    _set_size(master, *self.console.initial_size)  # before the process looks
                child = self.reaper.spawn(
                    list(cfg.args),
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    preexec_fn=_set_ctty,
                    **common,
                )
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            self._pty = master
            return child, master, None, master
        return self._spawn_pipes(common)

    def _spawn_pipes(self, common: dict[str, object]) -> tuple[Child, int, int | None, int | None]:
        apart = self.console is not None and self.console.separate_stderr
        r, w = os.pipe()
        er, ew = os.pipe() if apart else (None, w)
        stdin_r, stdin_w = os.pipe() if self.cfg.openstdin else (None, None)
        for fd in (r, er):
            if fd is not None:
                _grow_pipe(fd)
        try:
            child = self.reaper.spawn(
                list(self.cfg.args),
                stdin=stdin_r if stdin_r is not None else subprocess.DEVNULL,
                stdout=w,
                stderr=ew,
                **common,
            )
        except BaseException:
            for fd in (r, er, stdin_w):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in {w, ew, stdin_r} - {None}:
                assert fd is not None
                os.close(fd)
        return child, r, er, stdin_w

    def _resize(self, rows: int, cols: int) -> None:
        """A resize from an attach: the pty's size (the kernel sends SIGWINCH to its
        foreground process group)."""
        if self._pty is None or self.status is not None:
            return
        try:
            _set_size(self._pty, rows, cols)
        except OSError as e:
            log.warning("session %s: resize: %s", self.cfg.id, e)

    async def _wait_goahead(self) -> None:
        key = gi.goahead_key(self.cfg.id)
        last: dict[str, str | None] = {key: None}
        while True:
            try:
                vals = await self.backend.get_many([key])
                if gi.decode_bool(vals.get(key)):
                    return
                last = await self.backend.wait_changed([key], vals)
                if gi.decode_bool(last.get(key)):
                    return
            except (BackendError, gi.GuestinfoError) as e:
                log.warning("session %s: waiting for go-ahead: %s", self.cfg.id, wire(str(e)))
                await trio.sleep(self.backend.poll_interval)

    # -- run ---------------------------------------------------------------------------

    async def run(self) -> ExitStatus | None:
        cfg = self.cfg
        if cfg.runblock:
            log.info("session %s: waiting for the appliance's go-ahead", cfg.id)
            await self._wait_goahead()
        try:
            child, out_fd, err_fd, in_fd = self._spawn()
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            text = launch_error_text(cfg, e)
            log.error("session %s: %s", cfg.id, wire(text))
            await self.publisher.start_failed(cfg.id, text)
            return None
        self.child = child
        self.launched.set()
        log.info("session %s: started pid %d: %s", cfg.id, child.pid, wire(" ".join(cfg.args)))
        await self.publisher.started(cfg.id)

        out_stream = trio.lowlevel.FdStream(out_fd)
        err_stream = None if err_fd is None else trio.lowlevel.FdStream(err_fd)
        if in_fd is not None:
            self._stdin = out_stream if in_fd == out_fd else trio.lowlevel.FdStream(in_fd)
        self._hook_console()
        output_done = trio.Event()
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._pump_all, out_stream, err_stream, output_done)
                n.start_soon(self._signals)
                self.status = await child.wait()
                self.exited.set()
                await self._wait_output_end(output_done)
                n.cancel_scope.cancel()
        finally:
            if self.status is None:  # the agent is stopping: so does the container
                self._stop_child()
            self._unhook_console()
            with trio.CancelScope(shield=True):
                await out_stream.aclose()
                if err_stream is not None:
                    await err_stream.aclose()
                if self._stdin is not None and self._stdin is not out_stream:
                    await self._stdin.aclose()
                self._stdin = None
        if self.console is not None:
            ok = await self.console.flush(self.options.flush_timeout)
            if not ok:
                await self.publisher.error(
                    "console", f"session {cfg.id}: console output not delivered before exit report"
                )
        st = self.status
        log.info("session %s: exited %d %s", cfg.id, st.code, st.signal_name)
        await self.publisher.exited(cfg.id, st.code, st.signal_name)
        return st

    async def _wait_output_end(self, done: trio.Event) -> None:
        """After the exit: wait for output EOF, but not forever. Cut it short when the
        pump has been waiting for data for ``drain_grace`` (someone else holds the
        output open), or has been blocked on a stuck console for ``flush_timeout``."""
        grace = max(self.options.drain_grace, 0.01)
        while not done.is_set():
            with trio.move_on_after(grace):
                await done.wait()
            if done.is_set():
                return
            idle = trio.current_time() - self._last_progress
            if self._reading and idle >= grace:
                log.warning("session %s: output still open after exit; not waiting", self.cfg.id)
                return
            if not self._reading and idle >= self.options.flush_timeout:
                log.warning("session %s: console stuck at exit; not waiting", self.cfg.id)
                return

    def _hook_console(self) -> None:
        if self.console is not None:
            self.console.on_input = self._input
            if self._pty is not None:
                self.console.on_resize = self._resize

    def _unhook_console(self) -> None:
        if self.console is not None and self.console.on_input == self._input:
            self.console.on_input = None
        if self.console is not None and self.console.on_resize == self._resize:
            self.console.on_resize = None

    async def _pump_all(
        self,
        out: trio.lowlevel.FdStream,
        err: trio.lowlevel.FdStream | None,
        done: trio.Event,
    ) -> None:
        try:
            if err is None:  # the raw console's one merged pipe: no task of its own
                await self._pump_output(out, False)
                return
            async with trio.open_nursery() as n:
                n.start_soon(self._pump_output, out, False)
                n.start_soon(self._pump_output, err, True)
        finally:
            done.set()

    async def _pump_output(self, stream: trio.lowlevel.FdStream, stderr: bool) -> None:
        while True:
            try:
                self._reading = True
                data = await stream.receive_some(READ_CHUNK)
                self._reading = False
                self._last_progress = trio.current_time()
            except trio.BrokenResourceError as e:  # pty: EIO once the slave is closed
                cause = e.__cause__
                if isinstance(cause, OSError) and cause.errno != errno.EIO:
                    log.warning("session %s: output: %s", self.cfg.id, cause)
                break
            if not data:
                break
            self.output_bytes += len(data)
            if self.console is not None:
                if stderr:
                    await self.console.write_stderr(data)
                else:
                    await self.console.write(data)
                self._last_progress = trio.current_time()

    async def _input(self, data: bytes | bytearray) -> None:
        s = self._stdin
        if s is None:
            return
        try:
            await s.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass

    async def _signals(self) -> None:
        key = gi.signal_key(self.cfg.id)
        done_seq = 0
        vals: dict[str, str | None] = {key: None}
        # a request already present before launch is for this run unless acked
        with contextlib.suppress(BackendError, gi.GuestinfoError):
            ack_key = gi.signal_ack_key(self.cfg.id)
            ack = (await self.backend.get_many([ack_key]))[ack_key]
            done_seq = gi.parse_seq(ack) or 0
        while True:
            try:
                vals = await self.backend.get_many([key]) if vals[key] is None else vals
                req = gi.decode_signal_request(vals.get(key))
                if req is not None and req[0] > done_seq:
                    done_seq = req[0]
                    self._deliver(req[1])
                    await self.publisher.signal_ack(self.cfg.id, req[0])
                vals = await self.backend.wait_changed([key], vals)
            except (BackendError, gi.GuestinfoError) as e:
                log.warning("session %s: signal request: %s", self.cfg.id, wire(str(e)))
                vals = {key: None}
                await trio.sleep(self.backend.poll_interval)

    def _stop_child(self) -> None:
        if self.child is None:
            return
        try:
            sig = signal_number(self.cfg.stopsignal or "SIGTERM")
        except ValueError:
            sig = signal.SIGTERM
        log.info("session %s: agent stopping, sending signal %d", self.cfg.id, sig)
        self.child.send_signal(sig, group=True)

    def _deliver(self, name: str) -> None:
        if self.child is None:
            return
        try:
            sig = signal_number(name)
        except ValueError as e:
            log.warning("session %s: %s", self.cfg.id, wire(str(e)))
            return
        log.info("session %s: delivering %s", self.cfg.id, wire(name))
        self.child.send_signal(sig, group=self.options.signal_group)
