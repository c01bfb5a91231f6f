"""The container's main process over the session: OPEN_ATTACH channels (issue 13).

When the tether takes the console's channel, the agent hands the main process's
``SessionRunner`` a ``MainAttach`` where it would hand a ``ConsoleLink``: the runner
writes the process's output to it and reads its input from ``on_input`` as before.

* Output goes to every attach channel: stdout on STDOUT and stderr on STDERR (the
  runner gives stderr its own pipe for this link: ``separate_stderr``), or both on
  TTY for a tty channel (a tty process has one stream anyway). Channels are accepted with the DROP
  policy: the main process never stalls for an absent appliance; bytes beyond the
  replay bound that the appliance missed arrive as an explicit GAP. Output written
  before the first attach is held (the last ``hold_bytes``) and goes to that attach.
* STDIN of any attach channel goes to the process, one writer at a time, in order;
  it is acknowledged once written (``consumed``).
* An attach may come before the process starts (its output then starts with the
  process's). When the process ends (``main_exited``), every attach channel gets EXIT
  and CLOSE; a later OPEN_ATTACH is refused, as is any while ``enabled`` is False (the
  agent kept the raw console link for the main process).

SIGNAL on an attach channel goes to the main process (``on_signal``, set by the agent);
RESIZE goes to the runner's ``on_resize`` (the pty's size, so SIGWINCH) when the main
process has a tty. The size an OPEN_ATTACH carries is applied the same way before any
output is relayed to it; one that comes before the process starts (or a RESIZE then) is
kept as ``initial_size``, which the runner gives the pty before the process runs.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from common.io.sealedsession import SessionEndpoint
from common.proto.session.channels import ChannelStateError
from common.proto.session.messages import ExitStatus, Stream
from common.proto.session.replay import Policy
from guestagent.channels import Channel
from guestagent.console import ConsoleLink

log = logging.getLogger(__name__)


async def _no_channel() -> Channel:  # pragma: no cover - MainAttach never connects
    raise OSError("the main process's output goes through the session")


class MainAttach(ConsoleLink):
    """A ``ConsoleLink`` for ``SessionRunner`` whose far end is the session's attach
    channels; see the module docstring."""

    separate_stderr = True

    def __init__(self, endpoint: SessionEndpoint, *, hold_bytes: int, replay_bytes: int) -> None:
        super().__init__(_no_channel)
        self.ep = endpoint
        self.hold_bytes = hold_bytes
        self.replay_bytes = replay_bytes
        self.enabled = False  # the agent handed it to the main process's runner
        self.on_signal: Callable[[int], None] | None = None  # the agent's: signal the process
        self.ended = False
        self._held: deque[tuple[bool, bytes]] = deque()  # (stderr?, chunk)
        self._held_size = 0
        self._channels: dict[int, Stream] = {}  # attach channel -> the stream it reads
        self._stdin: deque[tuple[int, bytes]] = deque()
        self._stdin_ready = trio.Event()

    # ------------------------------------------------------------ ConsoleLink's face
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Write STDIN to the process as it comes (the runner sets ``on_input``)."""
        task_status.started()
        while True:
            while not self._stdin:
                self._stdin_ready = trio.Event()
                await self._stdin_ready.wait()
            ch, data = self._stdin.popleft()
            try:
                if self.on_input is not None:
                    await self.on_input(data)
            finally:
                self.ep.consumed(ch, Stream.STDIN, len(data))

    async def write(self, data: bytes | bytearray) -> None:
        """The main process's output: to every attach channel, or held. Never blocks."""
        self._out(False, bytes(data))

    async def write_stderr(self, data: bytes | bytearray) -> None:
        self._out(True, bytes(data))

    def _out(self, stderr: bool, chunk: bytes) -> None:
        self.queued_total += len(chunk)
        if not self._channels:
            self._hold(stderr, chunk)
            return
        for ch, stream in list(self._channels.items()):
            self._send(ch, _stream(stream, stderr), chunk)

    async def flush(self, timeout: float = float("inf")) -> bool:
        return True  # the session owns delivery from here; EXIT follows the bytes

    # ------------------------------------------------------------ the tether's side
    def _hold(self, stderr: bool, chunk: bytes) -> None:
        self._held.append((stderr, chunk))
        self._held_size += len(chunk)
        while self._held_size > self.hold_bytes and self._held:
            self._held_size -= len(self._held.popleft()[1])

    def _send(self, ch: int, stream: Stream, chunk: bytes) -> None:
        try:
            self.ep.send(ch, stream, chunk)  # DROP: takes everything
        except ChannelStateError:
            self._channels.pop(ch, None)

    def attach(self, ch: int, tty: bool, rows: int = 0, cols: int = 0) -> None:
        """OPEN_ATTACH: accept (DROP policy), size the pty, start with the held output."""
        if self.ended or not self.enabled:
            why = "the main process has ended" if self.ended else "no main process attaches here"
            self.ep.reject(ch, why)
            return
        if not self.ep.accept(ch, replay_limit=self.replay_bytes, policy=Policy.DROP):
            return
        stream = Stream.TTY if tty else Stream.STDOUT
        self._channels[ch] = stream
        if rows and cols:
            self._size(rows, cols)
        while self._held:
            stderr, chunk = self._held.popleft()
            self._send(ch, _stream(stream, stderr), chunk)
        self._held_size = 0

    def input(self, ch: int, data: bytes) -> None:
        if ch in self._channels and not self.ended:
            self._stdin.append((ch, data))
            self._stdin_ready.set()
        else:
            self.ep.consumed(ch, Stream.STDIN, len(data))

    def signal(self, ch: int, signo: int) -> None:
        """SIGNAL on an attach channel: to the main process (as ``docker kill`` does)."""
        if ch in self._channels and self.on_signal is not None and 0 < signo < 65:
            self.on_signal(signo)

    def resize(self, ch: int, rows: int, cols: int) -> None:
        """RESIZE on an attach channel: to the main process's pty (if it has one)."""
        if ch in self._channels:
            self._size(rows, cols)

    def _size(self, rows: int, cols: int) -> None:
        self.initial_size = (rows, cols)  # for a pty made from now on
        if self.on_resize is not None:
            self.on_resize(rows, cols)

    def detach(self, ch: int) -> None:
        """The appliance closed an attach channel."""
        self._channels.pop(ch, None)

    def detach_all(self) -> None:
        """The session was replaced: its channels are gone."""
        self._channels.clear()

    def owns(self, ch: int) -> bool:
        return ch in self._channels

    def main_exited(self, status: ExitStatus) -> None:
        """The main process ended: EXIT then CLOSE on every attach channel."""
        self.ended = True
        for ch in list(self._channels):
            try:
                self.ep.exit(ch, status)
                self.ep.close(ch)
            except ChannelStateError as e:  # the appliance closed it meanwhile
                log.debug("attach %d: %s", ch, e)
        self._channels.clear()


def _stream(channel_stream: Stream, stderr: bool) -> Stream:
    """Where a chunk goes on a channel reading ``channel_stream`` (TTY takes both)."""
    return Stream.STDERR if stderr and channel_stream is Stream.STDOUT else channel_stream
