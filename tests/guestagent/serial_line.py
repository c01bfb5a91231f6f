"""A serial line for tether tests: socat's pty pair (the null-modem cable of the lab),
the relay's serial-device ingress on the host end, and an appliance behind the relay."""

from __future__ import annotations

import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from common.io.sealedsession import SessionEndpoint
from common.proto.link.header import HeaderDecoder, OriginHeader
from common.proto.session import channels as chs
from relay.config import EgressConfig, HvsockListener, SerialListener
from relay.daemon import RelayDaemon
from tests.guestagent.tether_helpers import Appliance
from tests.relay.relayfix import relay_config, start_relay
from vic.lab.agent_processes import null_modem, stop

VM = "vm1"


@asynccontextmanager
async def socat_pair(d: Path) -> AsyncIterator[tuple[trio.Process, Path, Path]]:
    """socat's pty pair: (socat, guest end, host end); skips without socat."""
    if shutil.which("socat") is None:
        pytest.skip("socat not installed (it makes the pty pair)")
    proc, guest, host = await null_modem(d)
    try:
        yield proc, guest, host
    finally:
        await stop(proc, signal.SIGTERM)


class Prefixed(trio.abc.Stream):
    """``stream`` with ``first`` (read past the origin header) in front."""

    def __init__(self, stream: trio.abc.Stream, first: bytes) -> None:
        self.stream = stream
        self.first = first

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self.first:
            return await self.stream.receive_some(max_bytes)
        n = len(self.first) if max_bytes is None else max_bytes
        out, self.first = self.first[:n], self.first[n:]
        return out

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_origin(stream: trio.abc.Stream) -> tuple[OriginHeader, Prefixed] | None:
    """The relay's origin header and the stream that carries what follows it (None: the
    stream ended first)."""
    dec = HeaderDecoder()
    while data := await stream.receive_some(65536):
        header, rest = dec.feed(bytes(data))
        if header is not None:
            return header, Prefixed(stream, rest)
    return None


class RelayedAppliance(Appliance):
    """The appliance behind the relay, as ``vic vspc``'s session service is: each relayed
    stream starts with the origin header and carries one sealed connection; when that
    ends (say the handshake timed out: the tether had not opened its end yet) the
    appliance closes the stream, and the relay must reopen the line and send a new one.
    ``exits`` counts the exit statuses seen per channel."""

    def __init__(self, path: str, secret: bytes, handshake_timeout: float = 2.0) -> None:
        super().__init__(path, secret)
        self.handshake_timeout = handshake_timeout
        self.headers: list[OriginHeader] = []
        self.exits: dict[int, int] = {}

    async def _run(self, stream: trio.SocketStream) -> None:
        got = await read_origin(stream)
        if got is None:
            await stream.aclose()
            return
        header, line = got
        self.headers.append(header)
        end = await self.endpoint.run_connection(line, handshake_timeout=self.handshake_timeout)
        self._add_end(end)

    async def _dispatch_one(self, endpoint: SessionEndpoint) -> None:
        async for ev in endpoint.events():
            r = self.results.get(getattr(ev, "ch", -1))
            if r is None:
                continue
            match ev:
                case chs.ChannelOpened():
                    r.opened.set()
                case chs.Data(_, stream, data):
                    r.out.setdefault(stream, bytearray()).extend(data)
                case chs.Exited(ch, status):
                    r.status = status
                    self.exits[ch] = self.exits.get(ch, 0) + 1
                case chs.OpenRefused(_, reason):
                    r.refused = reason
                    r.done.set()
                case chs.ChannelClosed():
                    r.done.set()
                case _:
                    pass
            r.changed.set()


async def relay_serial(nursery: trio.Nursery, device: Path, appliance: Appliance) -> RelayDaemon:
    """A relay whose serial ingress reads ``device`` for ``vm1`` (label ``session``)."""
    serial = (SerialListener(name="tty", vm=VM, device=device, label="session"),)
    egress = EgressConfig(kind="unix", path=Path(appliance.path))
    return await start_relay(nursery, relay_config(egress, serial=serial))


async def relay_hvsock(nursery: trio.Nursery, uds: Path, port: int, appliance: Appliance) -> None:
    """A relay listening on ``<uds>_<port>`` for ``vm1``'s hybrid vsock (``session``)."""
    hv = (HvsockListener(name="hv", vm=VM, uds_path=uds, port=port, label="session"),)
    egress = EgressConfig(kind="unix", path=Path(appliance.path))
    await start_relay(nursery, relay_config(egress, hvsock=hv))
