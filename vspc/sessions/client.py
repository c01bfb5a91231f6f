"""The client side of EXEC and LOGS (``vic console exec`` / ``vic console logs``).

``run_exec`` returns the remote exit code (a signal is ``128 + signo``, as a shell
shows it; a refused exec is 126 with the reason on stderr; an exec its
``--timeout`` ended is ``TIMED_OUT``, 124 as coreutils' ``timeout`` says, with
one line on stderr); with ``tty`` and a
terminal on stdin, the terminal is raw while it runs and each SIGWINCH sends
the new size. ``run_logs`` writes stdout lines to stdout, stderr lines to
stderr (docker's frames on the wire), and returns 0, or 1 when the server
ended the logs with an error.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import struct
import sys
import threading
from typing import Any

import trio

from common.proto.console import protocol as proto
from vspc.console.client import ConsoleClientError, Endpoint, connect, read_status

REFUSED = 126
TIMED_OUT = 124  # as coreutils' timeout(1): the command was ended for its timeout
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """``--since``: epoch seconds, a duration back from ``now`` (``10m``, ``2h``,
    ``30s``, ``1d``) or an RFC3339 time; ValueError otherwise."""
    if m := _DURATION.match(text):
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _open(ep: Endpoint, req: proto.Request) -> tuple[trio.abc.Stream, bytes]:
    stream = await connect(ep)
    try:
        await stream.send_all(proto.encode_request(req))
        _, rest = await read_status(stream)
    except trio.BrokenResourceError as e:
        await trio.aclose_forcefully(stream)
        raise ConsoleClientError(f"connection lost: {e}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, rest


# ---------------------------------------------------------------- logs
async def run_logs(ep: Endpoint, req: proto.LogsRequest) -> int:
    try:
        stream, rest = await _open(ep, req)
    except ConsoleClientError as e:
        print(f"vic console: {e}", file=sys.stderr)
        return 1
    buf = bytearray(rest)
    async with stream:
        while True:
            code = await trio.to_thread.run_sync(_demux, buf)
            if code is not None:
                return code
            try:
                data = await stream.receive_some(64 * 1024)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                return 0 if not buf else 1
            buf += data


def _demux(buf: bytearray) -> int | None:
    """Write the whole frames in ``buf`` (and drop them); 1 at an error frame."""
    while len(buf) >= 8:
        stream, length = struct.unpack_from(">BxxxI", buf)
        if len(buf) < 8 + length:
            return None
        payload = bytes(buf[8 : 8 + length])
        del buf[: 8 + length]
        if stream == proto.LOGS_ERROR_STREAM:
            sys.stderr.write(f"vic console: {payload.decode('utf-8', 'replace')}\n")
            return 1
        _write_all(2 if stream == 2 else 1, payload)
    return None


# ---------------------------------------------------------------- exec
def exec_request(
    vm: str, argv: list[str], interactive: bool, tty: bool, timeout: float | None = None
) -> proto.ExecRequest:
    """The request, with the local terminal's size (``-t`` on a terminal) for the
    remote pty to start with."""
    rows = cols = 0
    if tty and os.isatty(0):
        cols, rows = os.get_terminal_size(0)
    return proto.ExecRequest(
        vm=vm, argv=tuple(argv), tty=tty, stdin=interactive, rows=rows, cols=cols, timeout=timeout
    )


def run_exec(ep: Endpoint, req: proto.ExecRequest) -> int:
    saved: Any = None
    if req.tty and os.isatty(0):
        import termios
        import tty as ttymod

        saved = termios.tcgetattr(0)
        ttymod.setraw(0)
    try:
        return trio.run(_exec, ep, req)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, saved)


class _Exec:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.lock = trio.Lock()
        self.stop = threading.Event()

    async def send(self, frame: bytes) -> None:
        async with self.lock:
            try:
                await self.stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the output side reports the lost connection

    async def stdin(self) -> None:
        while True:
            data = await trio.to_thread.run_sync(_read, self.stop, abandon_on_cancel=True)
            if not data:
                await self.send(proto.encode_frame(proto.FrameType.STDIN_EOF))
                return
            await self.send(proto.encode_frame(proto.FrameType.STDIN, data))

    async def winch(self) -> None:
        with trio.open_signal_receiver(signal.SIGWINCH) as sigs:
            async for _ in sigs:
                cols, rows = os.get_terminal_size(0)
                await self.send(proto.resize_frame(rows, cols))

    async def output(self, first: bytes) -> int:
        try:
            return await self._output(first)
        except (trio.BrokenResourceError, proto.ProtocolError) as e:
            sys.stderr.write(f"vic console: connection lost: {e}\n")
            return 1

    async def _output(self, first: bytes) -> int:
        reader = proto.FrameReader()
        data = first
        while True:
            for frame in reader.feed(data):
                if frame.type is proto.FrameType.EXIT:
                    return _exit_code(proto.decode_line(frame.payload.rstrip(b"\n")))
                fd = 2 if frame.type is proto.FrameType.STDERR else 1
                await trio.to_thread.run_sync(_write_all, fd, frame.payload)
            data = bytes(await self.stream.receive_some(64 * 1024))
            if not data:
                sys.stderr.write("vic console: the appliance closed before the exit status\n")
                return 1


def _read(stop: threading.Event) -> bytes:
    import select

    while not stop.is_set():
        r, _, _ = select.select([0], [], [], 0.2)
        if r:
            return os.read(0, 64 * 1024)
    return b""


def _exit_code(obj: dict[str, Any]) -> int:
    if obj.get("timed_out") is True:
        how = f"killed by signal {obj['signal']}" if isinstance(obj.get("signal"), int) else ""
        how = how or (f"exit code {obj['code']}" if isinstance(obj.get("code"), int) else "")
        sys.stderr.write(f"vic console: exec timed out ({how or 'no exit status'})\n")
        return TIMED_OUT
    if isinstance(obj.get("code"), int):
        return int(obj["code"])
    if isinstance(obj.get("signal"), int):
        return 128 + int(obj["signal"])
    sys.stderr.write(f"vic console: exec failed: {json.dumps(obj.get('error', obj))}\n")
    return REFUSED


async def _exec(ep: Endpoint, req: proto.ExecRequest) -> int:
    try:
        stream, rest = await _open(ep, req)
    except ConsoleClientError as e:
        print(f"vic console: {e}", file=sys.stderr)
        return 1
    ex = _Exec(stream)
    try:
        async with stream, trio.open_nursery() as nursery:
            if req.stdin:
                nursery.start_soon(ex.stdin)
            if req.tty and os.isatty(0):
                nursery.start_soon(ex.winch)
            code = await ex.output(rest)
            nursery.cancel_scope.cancel()
    finally:
        ex.stop.set()
    return code
