"""Test helpers for the relay daemon tests: a stand-in appliance and config makers."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from common.proto.link.header import HeaderDecoder, HeaderError, OriginHeader
from relay.config import EgressConfig, LimitsConfig, MetricsConfig, RelayConfig, TimeoutsConfig
from relay.daemon import RelayDaemon

log = logging.getLogger("test.appliance")


@dataclass
class Received:
    header: OriginHeader
    data: bytearray = field(default_factory=bytearray)
    closed: trio.Event = field(default_factory=trio.Event)


class Appliance:
    """Reads the origin header with HeaderDecoder, then echoes (default) or just
    records what follows. ``streams`` lists every accepted stream in order."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.streams: list[Received] = []
        self.bad_headers: list[str] = []
        self.arrived = trio.Condition()
        self.port = 0
        self.path: Path | None = None

    async def handle(self, stream: trio.abc.Stream) -> None:
        dec = HeaderDecoder()
        header = None
        rest: bytes | bytearray = b""
        try:
            while header is None:
                data = await stream.receive_some(65536)
                if not data:
                    return
                header, rest = dec.feed(bytes(data))
        except HeaderError as e:
            self.bad_headers.append(str(e))
            await trio.aclose_forcefully(stream)
            return
        rec = Received(header)
        self.streams.append(rec)
        async with self.arrived:
            self.arrived.notify_all()
        try:
            while True:
                if rest:
                    rec.data += rest
                    if self.echo:
                        await stream.send_all(rest)
                rest = await stream.receive_some(65536)
                if not rest:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            rec.closed.set()
            await trio.aclose_forcefully(stream)

    async def wait_streams(self, n: int) -> list[Received]:
        async with self.arrived:
            while len(self.streams) < n:
                await self.arrived.wait()
        return self.streams

    async def serve_tcp(self, nursery: trio.Nursery) -> int:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1")
        )
        self.port = listeners[0].socket.getsockname()[1]
        return self.port

    async def serve_unix(self, nursery: trio.Nursery, path: Path) -> Path:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(str(path))
        sock.listen(4096)
        nursery.start_soon(trio.serve_listeners, self.handle, [trio.SocketListener(sock)])
        self.path = path
        return path


def relay_config(egress: EgressConfig, **kw: Any) -> RelayConfig:
    kw.setdefault("host", "esx-test")
    kw.setdefault("metrics", MetricsConfig(enabled=False))
    kw.setdefault(
        "timeouts", TimeoutsConfig(connect=5.0, drain=5.0, retry_min=0.01, retry_max=0.05)
    )
    kw.setdefault("limits", LimitsConfig())
    return RelayConfig(egress={"default": egress}, **kw)


def tcp_egress(port: int) -> EgressConfig:
    return EgressConfig(kind="tcp", host="127.0.0.1", port=port)


async def start_relay(nursery: trio.Nursery, cfg: RelayConfig, **kw: Any) -> RelayDaemon:
    daemon = RelayDaemon(cfg, **kw)
    await nursery.start(daemon.run)
    return daemon


async def roundtrip(stream: trio.abc.Stream, payload: bytes) -> bytes:
    """Send payload and read the same number of bytes back (through an echo)."""
    out = bytearray()

    async def reader() -> None:
        while len(out) < len(payload):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            out.extend(chunk)

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await stream.send_all(payload)
    return bytes(out)


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic bytes covering every value (0xFF, NUL, CR included)."""
    base = bytes((i * 7 + seed) & 0xFF for i in range(256))
    return (base * (n // 256 + 1))[:n]


async def socat_client(args: list[str], payload: bytes, timeout: float = 20) -> bytes:
    """Run socat with ``payload`` on stdin; return its stdout."""
    with trio.fail_after(timeout):
        r = await trio.run_process(
            ["socat", *args], stdin=payload, capture_stdout=True, capture_stderr=True
        )
    return bytes(r.stdout)


class Muxer:
    """Firecracker-compatible hybrid vsock muxer stand-in: listens on a Unix socket,
    reads ``CONNECT <port>\\n``, replies ``OK <n>\\n`` (with ``greeting`` bytes from
    the "guest" in the same write), then splices to a backend TCP port.
    ``mode``: "ok" | "silent" (never replies) | "long" (over-long line) |
    "garbage" (a malformed line) | "refuse" (closes without a reply)."""

    def __init__(self, backend_port: int, greeting: bytes = b"", mode: str = "ok") -> None:
        self.backend_port = backend_port
        self.greeting = greeting
        self.mode = mode
        self.requests: list[int] = []
        self.connections = 0

    async def handle(self, stream: trio.abc.Stream) -> None:
        from relay.core.hybrid import ConnectRequestParser, ok_reply

        self.connections += 1
        parser = ConnectRequestParser()
        port = None
        rest = b""
        try:
            while port is None:
                data = await stream.receive_some(1024)
                if not data:
                    return
                port, rest = parser.feed(bytes(data))
            self.requests.append(port)
            if self.mode == "silent":
                await trio.sleep_forever()
            if self.mode == "refuse":
                return
            if self.mode == "long":
                await stream.send_all(b"OK " + b"9" * 5000 + b"\n")
                await trio.sleep_forever()
            if self.mode == "garbage":
                await stream.send_all(b"NOPE no such port\n")
                await trio.sleep_forever()
            await stream.send_all(ok_reply(1073741824 + port) + self.greeting)
            backend = await trio.open_tcp_stream("127.0.0.1", self.backend_port)
            if rest:
                await backend.send_all(rest)

            async def copy(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
                try:
                    while data := await src.receive_some(65536):
                        await dst.send_all(data)
                    await dst.send_eof()  # type: ignore[attr-defined]
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as n:
                n.start_soon(copy, stream, backend)
                n.start_soon(copy, backend, stream)
            await backend.aclose()
        finally:
            await trio.aclose_forcefully(stream)

    async def serve(self, nursery: trio.Nursery, path: Path) -> Path:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(str(path))
        sock.listen(128)
        nursery.start_soon(trio.serve_listeners, self.handle, [trio.SocketListener(sock)])
        return path


async def wait_closed(
    stream: trio.abc.Stream,
    timeout: float = 10,
    ends: tuple[type[Exception], ...] = (trio.BrokenResourceError,),
) -> bytes:
    """Read until the peer closes (EOF, or one of ``ends``: a reset); returns what was read."""
    got = bytearray()
    with trio.fail_after(timeout):
        try:
            while chunk := await stream.receive_some(65536):
                got += chunk
        except ends:
            pass
    return bytes(got)
