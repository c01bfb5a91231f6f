"""One exec channel of the tether: an ``ExecProcess`` pumped to and from its session channel.

``ExecChannel.run`` starts the process (OPEN_FAILED with the reason if it cannot),
answers OPENED, then pumps: STDIN from the session into the process, its STDOUT and
STDERR (tty off) or TTY (tty on) into the session, each read no larger than the room
the channel's replay bound has (so nothing is queued here and a stalled appliance
stalls the process, not the agent's memory). When the process ends, output is read
to its end (a grandchild still holding it open is given ``drain_grace`` seconds of
silence), then EXIT carries the status (a timeout: SIGKILL, flagged timed out) and the tether
closes the channel.

STDIN: ``put_stdin`` never blocks (the event loop must not); bytes are acknowledged to
the appliance only once written to the process (``consumed``), so the appliance's
replay bound limits what waits here. ``stdin_limit`` is a safety net against an
appliance that ignores that: past it the held bytes are dropped and stdin closed (one
log line). Once stdin is closed or the process stops reading it, later bytes are
acknowledged and dropped.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

import trio

from common.io.sealedsession import SessionEndpoint
from common.ops.wiretext import wire
from common.proto.session import messages as msg
from common.proto.session.channels import ChannelStateError
from guestagent.execproc import ExecProcess, start_exec
from guestagent.execspec import ExecSpec, ExecStartError, ExitStatus, StdinClosed
from guestagent.execspec import Stream as ProcStream
from guestagent.reaper import Reaper

log = logging.getLogger(__name__)

READ_MAX = 64 * 1024
_WIRE_STREAM = {
    ProcStream.STDOUT: msg.Stream.STDOUT,
    ProcStream.STDERR: msg.Stream.STDERR,
    ProcStream.TTY: msg.Stream.TTY,
}


def local_spec(spec: msg.ExecSpec) -> ExecSpec:
    """The wire's spec as ``start_exec`` takes it (ExecStartError if it is not valid)."""
    return ExecSpec(
        argv=spec.argv,
        env=dict(spec.env),
        cwd=spec.cwd or None,
        user=spec.user or None,
        tty=spec.tty,
        rows=spec.rows,
        cols=spec.cols,
        timeout=spec.timeout_ms / 1000 if spec.timeout_ms else None,
    )


class ExecChannel:
    """One exec: see the module docstring. Events reach it through the ``on_*`` calls."""

    def __init__(
        self,
        endpoint: SessionEndpoint,
        ch: int,
        spec: msg.ExecSpec,
        *,
        reaper: Reaper,
        container_pid: int | None,
        stdin_limit: int,
        drain_grace: float,
    ) -> None:
        self.ep = endpoint
        self.ch = ch
        self.spec = spec
        self.reaper = reaper
        self.container_pid = container_pid
        self.stdin_limit = stdin_limit
        self.drain_grace = drain_grace
        self.proc: ExecProcess | None = None
        self.status: msg.ExitStatus | None = None
        self.done = trio.Event()  # run() returned
        self._stdin: deque[bytes | None] = deque()  # None: end of input
        self._stdin_held = 0
        self._stdin_dead = False
        self._stdin_ready = trio.Event()
        self._exited = False
        self._reads: dict[ProcStream, trio.CancelScope] = {}
        self._closed_by_peer = False
        self._session = endpoint.session  # the session this channel belongs to

    def _ours(self) -> bool:
        """Still our session (the tether starts a new one if the appliance lost it)."""
        return self.ep.session is self._session

    @property
    def stdin_held(self) -> int:
        """STDIN bytes received and not yet written to the process."""
        return self._stdin_held

    # ------------------------------------------------------------ events (never block)
    def put_stdin(self, data: bytes) -> None:
        if self._stdin_dead:
            self._used(len(data))
            return
        if self._stdin_held + len(data) > self.stdin_limit:  # the appliance ignored the ACKs
            log.warning(
                "exec %d: more than %d bytes of stdin held; dropping them, closing stdin",
                self.ch,
                self.stdin_limit,
            )
            self._kill_stdin()
            self._used(len(data))
            self._stdin.append(None)
        else:
            self._stdin.append(data)
            self._stdin_held += len(data)
        self._stdin_ready.set()

    def _used(self, n: int) -> None:
        """Acknowledge ``n`` bytes of STDIN (written to the process or dropped)."""
        if self._ours():
            self.ep.consumed(self.ch, msg.Stream.STDIN, n)

    def _kill_stdin(self) -> None:
        """Nothing more goes to the process: drop what is held, and all that comes."""
        self._used(self._stdin_held)
        self._stdin.clear()
        self._stdin_held = 0
        self._stdin_dead = True

    def end_stdin(self) -> None:
        if not self._stdin_dead:
            self._stdin.append(None)
            self._stdin_dead = True
            self._stdin_ready.set()

    def resize(self, rows: int, cols: int) -> None:
        if self.proc is not None and self.spec.tty:
            try:
                self.proc.resize(rows, cols)
            except (ValueError, OSError) as e:
                log.info("exec %d: resize %dx%d: %s", self.ch, rows, cols, wire(str(e)))

    def signal(self, signo: int) -> None:
        if self.proc is not None:
            try:
                self.proc.signal(signo)
            except (ValueError, OSError) as e:
                log.info("exec %d: signal %d: %s", self.ch, signo, wire(str(e)))

    def peer_closed(self) -> None:
        """The appliance closed the channel: the exec is no longer wanted."""
        self._closed_by_peer = True
        self.end_stdin()
        if self.proc is not None:
            self.proc.kill()

    # ------------------------------------------------------------ the exec's life
    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.done.set()

    async def _run(self) -> None:
        try:
            spec = local_spec(self.spec)
            self.proc = await start_exec(spec, reaper=self.reaper, container_pid=self.container_pid)
        except ExecStartError as e:
            log.info("exec %d: %s", self.ch, wire(e.reason))
            self._session_call(self.ep.reject, self.ch, e.reason)
            return
        if self._closed_by_peer or not self._session_call(self.ep.accept, self.ch):
            self.proc.kill()
        async with self.proc:
            status = await self._pump(self.proc)
        self._kill_stdin()  # what the process never read: acknowledged, dropped
        self.status = msg.ExitStatus(status.code, status.signal, status.timed_out)
        self._session_call(self.ep.exit, self.ch, self.status)
        self._session_call(self.ep.close, self.ch)

    def _session_call(self, fn: Callable[..., object], *args: object) -> bool:
        """``fn(*args)`` on our session; False if it is gone or the channel is closed."""
        if not self._ours():
            return False
        try:
            return fn(*args) is not False
        except ChannelStateError as e:  # the appliance closed the channel first
            log.debug("exec %d: %s", self.ch, e)
            return False

    async def _pump(self, proc: ExecProcess) -> ExitStatus:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stdin_pump, proc)
            async with trio.open_nursery() as outputs:
                for stream in proc.streams:
                    outputs.start_soon(self._output_pump, proc, stream)
                status = await proc.wait()
                self._exited = True
                for scope in self._reads.values():  # output idle from now on ends it
                    scope.deadline = trio.current_time() + self.drain_grace
            nursery.cancel_scope.cancel()
        return status

    async def _stdin_pump(self, proc: ExecProcess) -> None:
        while True:
            while not self._stdin:
                self._stdin_ready = trio.Event()
                await self._stdin_ready.wait()
            data = self._stdin.popleft()
            if data is None:
                await proc.close_stdin()
                return
            self._stdin_held -= len(data)
            try:
                await proc.write_stdin(data)
            except StdinClosed:
                self._kill_stdin()
                return
            finally:
                self._used(len(data))

    async def _output_pump(self, proc: ExecProcess, stream: ProcStream) -> None:
        wire_stream = _WIRE_STREAM[stream]
        while self._ours() and await self.ep.wait_writable(self.ch, wire_stream):
            room = self.ep.session.room(self.ch, wire_stream)
            data = await self._read(proc, stream, min(room, READ_MAX))
            if not data:
                return
            if not self._ours() or not await self.ep.send_all(self.ch, wire_stream, data):
                break
        # the channel is gone (the appliance closed it): drain so the process never blocks
        while await self._read(proc, stream, READ_MAX):
            pass

    async def _read(self, proc: ExecProcess, stream: ProcStream, n: int) -> bytes:
        deadline = trio.current_time() + self.drain_grace if self._exited else math.inf
        scope = self._reads[stream] = trio.CancelScope(deadline=deadline)
        with scope:
            try:
                return await proc.read(stream, n)
            except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
                return b""
        return b""  # silent for drain_grace after the exit: a grandchild holds it open
