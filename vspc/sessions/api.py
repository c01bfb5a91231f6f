"""The appliance's one async API for tethered VMs (issue 13), under the CLI and
the Docker endpoint alike.

    api = SessionsApi(service)              # vspc.sessions.service.SessionService
    status = await api.exec(vm, ["cat"], stdin=src, stdout=out, stderr=err)
    status = await api.attach(vm, stdin=src, stdout=out)   # the main process
    async with aclosing(api.logs(vm, tail=10, follow=True)) as chunks: ...
    api.status(vm)
    await api.rotate(vm)                     # a new secret for the next connection

``exec`` runs a process in the VM and returns its ``ExitStatus`` (``code`` or
``signal``; ``timed_out`` if a tether that reports it killed it for its timeout)
once its output has all been given; a refused exec raises
``ExecRefused``, a VM with no session ``NoSession``. ``timeout`` (seconds) is
sent to the tether, which kills the process when it passes (the status says
so); the appliance gives it ``TIMEOUT_GRACE`` more and then raises
``trio.TooSlowError``. Cancelling ``exec`` closes the channel (the tether ends
the process). ``attach`` gives the main process's output from now on and takes
its input; it returns the main process's exit status when it ends (at once if
it has), or None when the attached client fell too far behind and was dropped.
``logs`` gives the container log (``vspc.containerlogs``). Standard streams and
``resize``: see ``vspc.sessions.pipes``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass

import trio

from common.proto.identity import IdentityError
from common.proto.session import channels as chs
from common.proto.session.messages import ExecSpec, ExitStatus, Stream
from vspc.console.logfile import file_stem
from vspc.containerlogs.files import log_files
from vspc.containerlogs.shapes import Shape
from vspc.containerlogs.shapes import logs as shaped_logs
from vspc.containerlogs.store import LABEL as LOG_LABEL
from vspc.core.identity import PortKey, vm_key
from vspc.core.linelog import STREAMS
from vspc.core.linelog import Stream as LogStream
from vspc.sessions.channel import ChannelQueue, MainState, Tap, VmSession
from vspc.sessions.metrics import outcome
from vspc.sessions.pipes import Sink, Sizes, Source, chunks, writer
from vspc.sessions.service import SessionService

__all__ = ["ExecRefused", "ExitStatus", "NoSession", "SessionStatus", "SessionsApi", "Shape"]

TIMEOUT_GRACE = 5.0
SIGKILL = 9


class NoSession(LookupError):
    """The VM has no session on this appliance (not tethered, or sessions are off)."""


class ExecRefused(Exception):
    """The tether refused the exec (no such program, bad user...): ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SessionStatus:
    vm: str
    connected: bool  # a connection carries the session now
    connections: int  # connections that carried it so far
    main: MainState
    exit: ExitStatus | None
    reason: str = ""  # why the tether refused the attach, when it did

    def to_json(self) -> dict[str, object]:
        ex = self.exit
        return {
            "vm": self.vm,
            "connected": self.connected,
            "connections": self.connections,
            "main": self.main.value,
            "exit": None
            if ex is None
            else {"code": ex.code, "signal": ex.signal, "timed_out": ex.timed_out},
            "reason": self.reason,
        }


class SessionsApi:
    def __init__(self, service: SessionService) -> None:
        self.service = service

    def _session(self, vm: str) -> VmSession:
        try:
            s = self.service.find(vm)
        except IdentityError:
            s = None
        if s is None:
            raise NoSession(f"{vm}: no session (not a tethered VM?)")
        return s

    async def exec(
        self,
        vm: str,
        argv: Sequence[str],
        *,
        stdin: Source | None = None,
        stdout: Sink | None = None,
        stderr: Sink | None = None,
        tty: bool = False,
        env: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        cwd: str = "",
        user: str = "",
        size: tuple[int, int] = (0, 0),
        resize: Sizes | None = None,
        timeout: float | None = None,
    ) -> ExitStatus:
        """See the module doc. With ``tty`` the output is all ``stdout``."""
        s = self._session(vm)
        pairs = tuple(env.items()) if isinstance(env, Mapping) else tuple(env)
        ms = 0 if timeout is None else max(1, int(timeout * 1000))
        spec = ExecSpec(tuple(argv), pairs, cwd, user, tty, size[0], size[1], ms)
        q = s.queue(spec)
        m, how = self.service.metrics, "cancelled"
        m.exec_started()
        try:
            with trio.fail_after(_deadline(timeout)):
                status = await _run_channel(s, q, stdin, stdout, stderr, resize)
            how = outcome(status)
            return status
        except ExecRefused:
            how = "refused"
            raise
        except trio.TooSlowError:
            how = "timeout"
            raise
        finally:
            m.exec_finished(how)
            s.forget(q.ch)
            s.close(q.ch)

    async def attach(
        self,
        vm: str,
        *,
        stdin: Source | None = None,
        stdout: Sink | None = None,
        stderr: Sink | None = None,
        size: tuple[int, int] = (0, 0),
        resize: Sizes | None = None,
    ) -> ExitStatus | None:
        """See the module doc. Ending ``stdin`` does not end the main process;
        ``size`` (the client's terminal) reaches the main process's pty before
        any of ``stdin``, then each of ``resize`` (a tether without a pty for it
        may ignore them)."""
        s = self._session(vm)
        if s.main.state is MainState.EXITED:
            return s.main.exit
        if s.main.ch is None or s.main.state is MainState.REFUSED:
            raise ExecRefused(s.main.reason or "no main process to attach to")
        if size[0] and size[1]:
            s.ep.resize(s.main.ch, *size)
            s.main_size = size
        tap = Tap()
        s.taps.add(tap)
        try:
            async with trio.open_nursery() as nursery:
                if stdin is not None:
                    nursery.start_soon(_pump_main, s, stdin)
                if resize is not None:
                    nursery.start_soon(_pump_resize, s, s.main.ch, resize)
                status = await _follow_tap(tap, writer(stdout), writer(stderr))
                nursery.cancel_scope.cancel()
            return status
        finally:
            s.taps.discard(tap)

    async def has_logs(self, vm: str) -> bool:
        """Whether ``logs(vm)`` has anything to say: the VM has a session here, or a
        container log (held, or in files from before a restart)."""
        try:
            key = vm_key(vm)
        except IdentityError:
            return False
        if self.service.find(key) is not None or self.service.logs.memory(key) > 0:
            return True
        log_dir = self.service.logs.settings.dir
        if log_dir is None:
            return False
        stem = file_stem(PortKey(key, LOG_LABEL))
        return bool(await trio.to_thread.run_sync(log_files, log_dir, stem))

    def logs(
        self,
        vm: str,
        *,
        tail: int | None = None,
        since: float | None = None,
        follow: bool = False,
        timestamps: bool = False,
        streams: frozenset[LogStream] = STREAMS,
        shape: Shape = Shape.TEXT,
    ) -> AsyncGenerator[bytes, None]:
        """The VM's container log as bytes to send (``vspc.containerlogs.shapes``);
        ``FollowLagged`` when a follower falls too far behind."""
        return shaped_logs(
            self.service.logs,
            vm,
            tail=tail,
            since=since,
            follow=follow,
            timestamps=timestamps,
            streams=streams,
            shape=shape,
        )

    async def rotate(self, vm: str) -> None:
        """A new session secret for ``vm`` (see ``SessionService.rotate``); the
        session carries on, its next connection uses the new secret."""
        self._session(vm)
        await self.service.rotate(vm)

    def status(self, vm: str) -> SessionStatus:
        s = self._session(vm)
        m = s.main
        return SessionStatus(vm, s.connected, s.connections, m.state, m.exit, m.reason)


def _deadline(timeout: float | None) -> float:
    return float("inf") if timeout is None else timeout + TIMEOUT_GRACE


async def _run_channel(
    s: VmSession,
    q: ChannelQueue,
    stdin: Source | None,
    stdout: Sink | None,
    stderr: Sink | None,
    resize: Sizes | None,
) -> ExitStatus:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump_stdin, s, q.ch, stdin)
        if resize is not None:
            nursery.start_soon(_pump_resize, s, q.ch, resize)
        result = await _collect(s, q, stdout, stderr)
        nursery.cancel_scope.cancel()
    if isinstance(result, str):
        raise ExecRefused(result)
    return result


async def _collect(
    s: VmSession, q: ChannelQueue, stdout: Sink | None, stderr: Sink | None
) -> ExitStatus | str:
    """The channel's output to the sinks; its exit status, or why it was refused."""
    out = {Stream.STDOUT: writer(stdout), Stream.TTY: writer(stdout), Stream.STDERR: writer(stderr)}
    while True:
        ev = await q.get()
        if isinstance(ev, chs.Data):
            await out[ev.stream](ev.data)
            s.ep.consumed(ev.ch, ev.stream, len(ev.data))  # the tether may send more
        elif isinstance(ev, chs.OpenRefused):
            return ev.reason
        elif isinstance(ev, chs.Exited):
            return ev.status
        elif isinstance(ev, chs.ChannelClosed):
            return "the channel closed before the process exited"


async def _pump_stdin(s: VmSession, ch: int, stdin: Source | None) -> None:
    if stdin is not None:
        async for data in chunks(stdin):
            await s.send_all(ch, data)
    s.ep.eof(ch, Stream.STDIN)


async def _pump_resize(s: VmSession, ch: int, sizes: Sizes) -> None:
    async for rows, cols in sizes:
        s.ep.resize(ch, rows, cols)
        if ch == s.main.ch:
            s.main_size = (rows, cols)  # for the main process of a new session


async def _pump_main(s: VmSession, stdin: Source) -> None:
    ch = s.main.ch
    assert ch is not None
    async for data in chunks(stdin):
        await s.send_all(ch, data)


async def _follow_tap(tap: Tap, stdout: Sink, stderr: Sink) -> ExitStatus | None:
    out = {Stream.STDOUT: writer(stdout), Stream.TTY: writer(stdout), Stream.STDERR: writer(stderr)}
    while True:
        ev = await tap.get()
        if ev is None:
            return None
        if isinstance(ev, chs.Exited):
            return ev.status
        await out[ev.stream](ev.data)
