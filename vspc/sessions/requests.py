"""EXEC, LOGS, SESSION-ATTACH and ROTATE requests of the console endpoint
(``common.proto.console.protocol``), served from the session API: the console
service hands them here after the request line, with the bytes that followed it."""

from __future__ import annotations

import logging
from contextlib import aclosing

import trio

from common.ops.wiretext import wire
from common.proto.console import protocol as proto
from common.proto.guestinfo.errors import GuestinfoError
from vspc.containerlogs.follow import FollowLagged
from vspc.containerlogs.shapes import Shape
from vspc.containerlogs.store import TooManyFollowers
from vspc.sessions.api import ExecRefused, ExitStatus, NoSession, SessionsApi

log = logging.getLogger("vspc.sessions")

RECV_SIZE = 64 * 1024
INPUT_CHUNKS = 16  # stdin chunks queued between the client and the session


async def _error(stream: trio.abc.Stream, message: str) -> None:
    await stream.send_all(proto.encode_line({"ok": False, "error": message}))


async def serve_request(
    api: SessionsApi,
    stream: trio.abc.Stream,
    req: proto.SessionRequest,
    rest: bytes,
) -> None:
    if isinstance(req, proto.LogsRequest):
        await serve_logs(api, stream, req)
    elif isinstance(req, proto.SessionAttachRequest):
        await serve_attach(api, stream, req, rest)
    elif isinstance(req, proto.RotateRequest):
        await serve_rotate(api, stream, req)
    else:
        await serve_exec(api, stream, req, rest)


async def serve_rotate(api: SessionsApi, stream: trio.abc.Stream, req: proto.RotateRequest) -> None:
    try:
        await api.rotate(req.vm)
    except (NoSession, OSError, GuestinfoError) as e:
        await _error(stream, str(e))
        return
    log.info("session secret of %s rotated", wire(req.vm))
    await stream.send_all(proto.encode_line({"ok": True, "vm": req.vm}))


async def serve_attach(
    api: SessionsApi, stream: trio.abc.Stream, req: proto.SessionAttachRequest, rest: bytes
) -> None:
    """The main process's output as frames, the client's STDIN and RESIZE to it; EXIT
    when it ends. The client closing the connection detaches (the process runs on)."""
    client = await _accept(api, stream, req.vm, req.stdin)
    if client is None:
        return

    async with trio.open_nursery() as nursery:

        async def read() -> None:
            await client.read(rest)
            nursery.cancel_scope.cancel()  # the client went: detached

        nursery.start_soon(read)
        try:
            status = await api.attach(
                req.vm,
                stdin=client.stdin,
                stdout=client.out,
                stderr=client.err,
                size=(req.rows, req.cols),
                resize=client.sizes,
            )
            if status is None:
                await stream.send_all(proto.exit_frame(error="dropped: fell too far behind"))
            else:
                await stream.send_all(_exit(status))
        except (ExecRefused, NoSession) as e:
            await stream.send_all(proto.exit_frame(error=str(e)))
        nursery.cancel_scope.cancel()


async def serve_logs(api: SessionsApi, stream: trio.abc.Stream, req: proto.LogsRequest) -> None:
    if not await api.has_logs(req.vm):
        await _error(stream, f"{req.vm}: no such VM here (no session, no container log)")
        return
    await stream.send_all(proto.encode_line({"ok": True, "vm": req.vm}))
    chunks = api.logs(
        req.vm,
        tail=req.tail,
        since=req.since,
        follow=req.follow,
        timestamps=req.timestamps,
        shape=Shape.DOCKER,
    )
    try:
        async with aclosing(chunks) as it:
            async for chunk in it:
                await stream.send_all(chunk)
    except (FollowLagged, TooManyFollowers) as e:
        await stream.send_all(proto.logs_error_frame(str(e)))


async def _accept(
    api: SessionsApi, stream: trio.abc.Stream, vm: str, stdin: bool
) -> _ExecClient | None:
    """The VM holds a session: say ok and take the client's frames; else say why."""
    try:
        api.status(vm)
    except NoSession as e:
        await _error(stream, str(e))
        return None
    await stream.send_all(proto.encode_line({"ok": True, "vm": vm}))
    return _ExecClient(stream, stdin)


class _ExecClient:
    """The client's frames turned into the API's stdin and resize iterators."""

    def __init__(self, stream: trio.abc.Stream, stdin: bool) -> None:
        self.stream = stream
        self.stdin_send, self.stdin = trio.open_memory_channel[bytes](INPUT_CHUNKS)
        self.sizes_send, self.sizes = trio.open_memory_channel[tuple[int, int]](INPUT_CHUNKS)
        self.reader = proto.FrameReader()
        if not stdin:
            self.stdin_send.close()

    async def out(self, data: bytes) -> None:
        await self.output(proto.FrameType.STDOUT, data)

    async def err(self, data: bytes) -> None:
        await self.output(proto.FrameType.STDERR, data)

    async def read(self, first: bytes) -> None:
        data = first
        try:
            while True:
                for frame in self.reader.feed(data):
                    await self._frame(frame)
                data = bytes(await self.stream.receive_some(RECV_SIZE))
                if not data:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.stdin_send.close()  # the client is gone or done: stdin ends

    async def _frame(self, frame: proto.Frame) -> None:
        t = proto.FrameType
        if frame.type is t.STDIN and frame.payload:
            try:
                await self.stdin_send.send(frame.payload)
            except trio.ClosedResourceError:
                raise proto.ProtocolError("STDIN after STDIN_EOF") from None
        elif frame.type is t.STDIN_EOF:
            self.stdin_send.close()
        elif frame.type is t.RESIZE:
            size = proto.parse_resize(frame.payload)
            if self._room():  # sizes beyond what waits are dropped: the last one counts
                self.sizes_send.send_nowait(size)
        else:
            raise proto.ProtocolError(f"a client does not send {frame.type.name}")

    def _room(self) -> bool:
        return self.sizes_send.statistics().current_buffer_used < INPUT_CHUNKS

    async def output(self, ftype: proto.FrameType, data: bytes) -> None:
        for i in range(0, len(data), proto.MAX_FRAME):
            await self.stream.send_all(proto.encode_frame(ftype, data[i : i + proto.MAX_FRAME]))


async def serve_exec(
    api: SessionsApi, stream: trio.abc.Stream, req: proto.ExecRequest, rest: bytes
) -> None:
    client = await _accept(api, stream, req.vm, req.stdin)
    if client is None:
        return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.read, rest)
        try:
            status = await api.exec(
                req.vm,
                req.argv,
                stdin=client.stdin,
                stdout=client.out,
                stderr=client.err,
                tty=req.tty,
                env=req.env,
                cwd=req.cwd,
                user=req.user,
                size=(req.rows, req.cols),
                resize=client.sizes,
                timeout=req.timeout,
            )
            await stream.send_all(_exit(status))
        except (ExecRefused, NoSession) as e:
            log.info("exec on %s refused: %s", wire(req.vm), wire(str(e)))
            await stream.send_all(proto.exit_frame(error=str(e)))
        except trio.TooSlowError:  # the tether did not end it in time: ours, then
            log.info("exec on %s: no exit status within its timeout", wire(req.vm))
            obj = {"error": "no exit status within the timeout", "timed_out": True}
            await stream.send_all(proto.encode_frame(proto.FrameType.EXIT, proto.encode_line(obj)))
        nursery.cancel_scope.cancel()


def _exit(status: ExitStatus) -> bytes:
    """The EXIT frame: ``{"code": n}`` or ``{"signal": n}``, with ``"timed_out": true``
    when the tether ended the process for its timeout."""
    if not status.timed_out:
        return proto.exit_frame(code=status.code, signal=status.signal)
    obj: dict[str, object] = {"timed_out": True}
    obj.update({"code": status.code} if status.signal is None else {"signal": status.signal})
    return proto.encode_frame(proto.FrameType.EXIT, proto.encode_line(obj))
