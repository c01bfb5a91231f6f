"""A tether end for the appliance's session tests: a ``SessionEndpoint`` (TETHER)
whose execs and main process are real processes (``guestagent.execproc``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import trio

from common.io.sealedsession import SessionEndpoint
from common.proto.session import channels as chs
from common.proto.session.channels import Role
from common.proto.session.messages import ErrorCode, ExitStatus, Stream
from common.proto.session.session import Session
from guestagent import execspec
from guestagent.execproc import ExecProcess, start_exec
from guestagent.reaper import Reaper

_OUT = {
    execspec.Stream.STDOUT: Stream.STDOUT,
    execspec.Stream.STDERR: Stream.STDERR,
    execspec.Stream.TTY: Stream.TTY,
}

_LOST = (ErrorCode.SESSION_MISMATCH,)  # as the agent's tether does


class Tether:
    def __init__(
        self,
        secrets: Callable[[], Sequence[bytes]],
        main: Sequence[str] | None = None,
        reaper: Reaper | None = None,
        *,
        main_tty: bool = False,
    ) -> None:
        self.ep = SessionEndpoint(Role.TETHER, Session(Role.TETHER), secrets, name="tether")
        self.main = main
        self.main_tty = main_tty  # the main process runs on a pty
        self.attached: list[chs.AttachRequested] = []
        self.tty_on_stdout: set[int] = set()  # a pty's output on a channel without tty
        self.own_reaper = reaper is None  # one reaper a process: share it between tethers
        self.reaper = reaper or Reaper()
        self.procs: dict[int, ExecProcess] = {}
        self.stdin: dict[int, trio.MemorySendChannel[bytes]] = {}
        self.resized: list[tuple[int, int]] = []
        self.resize_seen = trio.Event()
        self.sizes: dict[int, tuple[int, int]] = {}  # sizes asked for, maybe before the start
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.own_reaper:
                await nursery.start(self.reaper.run)
            task_status.started(self)
            async for ev in self.ep.events():
                self._on(ev)

    def _on(self, ev: chs.Event) -> None:
        assert self._nursery is not None
        if isinstance(ev, chs.ProtocolError) and ev.code in _LOST:
            self.ep.replace_session(Session(Role.TETHER))  # the appliance has another one
        elif isinstance(ev, chs.ExecRequested):
            spec = ev.spec
            req = execspec.ExecSpec(
                argv=spec.argv,
                env=dict(spec.env),
                cwd=spec.cwd or None,
                user=spec.user or None,
                tty=spec.tty,
                rows=spec.rows,
                cols=spec.cols,
                timeout=spec.timeout_ms / 1000 if spec.timeout_ms else None,
            )
            self._nursery.start_soon(self._run, ev.ch, req)
        elif isinstance(ev, chs.AttachRequested):
            self.attached.append(ev)
            if self.main is None:
                self.ep.reject(ev.ch, "no main process")
            else:
                tty, rows, cols = self.main_tty, ev.rows, ev.cols
                if tty and not ev.tty:
                    self.tty_on_stdout.add(ev.ch)  # as the agent's MainAttach does
                main = execspec.ExecSpec(argv=self.main, tty=tty, rows=rows, cols=cols)
                self._nursery.start_soon(self._run, ev.ch, main)
        elif isinstance(ev, chs.Data) and ev.ch in self.stdin:
            self.stdin[ev.ch].send_nowait(ev.data)
        elif isinstance(ev, chs.Eof) and ev.ch in self.stdin:
            self.stdin[ev.ch].close()
        elif isinstance(ev, chs.Resized):
            self.sizes[ev.ch] = (ev.rows, ev.cols)
            if ev.ch in self.procs:
                self._resize(ev.ch)
        elif isinstance(ev, chs.Signalled) and ev.ch in self.procs:
            self.procs[ev.ch].signal(ev.signo)
        elif isinstance(ev, chs.ChannelClosed) and ev.ch in self.procs:
            self.procs[ev.ch].kill()

    async def _run(self, ch: int, spec: execspec.ExecSpec) -> None:
        try:
            proc = await start_exec(spec, reaper=self.reaper)
        except execspec.ExecStartError as e:
            self.ep.reject(ch, e.reason)
            return
        self.ep.accept(ch)
        self.procs[ch] = proc
        if ch in self.sizes:
            self._resize(ch)
        send, receive = trio.open_memory_channel[bytes](1000)
        self.stdin[ch] = send
        async with proc:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stdin, proc, receive)
                async with trio.open_nursery() as outputs:
                    for stream in proc.streams:
                        outputs.start_soon(self._output, ch, proc, stream)
                    st = await proc.wait()  # enforces the timeout, so beside the outputs
                nursery.cancel_scope.cancel()
        self.ep.exit(ch, ExitStatus(st.code, st.signal, st.timed_out))

    def _resize(self, ch: int) -> None:
        rows, cols = self.sizes[ch]
        self.resized.append((rows, cols))
        if execspec.Stream.TTY in self.procs[ch].streams:
            self.procs[ch].resize(rows, cols)  # a pty's (the agent ignores it without one)
        self.resize_seen.set()

    async def _stdin(self, proc: ExecProcess, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        try:
            async for data in receive:
                await proc.write_stdin(data)
            await proc.close_stdin()
        except (execspec.StdinClosed, trio.BrokenResourceError, OSError):
            pass

    async def _output(self, ch: int, proc: ExecProcess, stream: execspec.Stream) -> None:
        while True:
            try:
                data = await proc.read(stream)
            except (OSError, trio.ClosedResourceError):
                return
            if not data:
                return
            out = Stream.STDOUT if ch in self.tty_on_stdout else _OUT[stream]
            await self.ep.send_all(ch, out, data)
