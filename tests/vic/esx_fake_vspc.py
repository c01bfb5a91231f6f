"""A tiny fake vSPC that works on raw bytes, for the ESX simulator's tests.

It uses no Telnet codec at all: it compares and builds wire bytes by hand, so
the simulator is tested independently of ``common.proto.telnet`` and of its own
decoder.
"""

from __future__ import annotations

import trio

from vic.lab import telnet_wire as tw
from vic.lab.esx_sim import (
    EsxConnection,
    SimVM,
)

IAC, SB, SE = 255, 250, 240
DO, DONT, WILL, WONT = 253, 254, 251, 252

VM = SimVM(
    uuid="42 3f 5a 1b 2c 3d 4e 5f-60 71 82 93 a4 b5 c6 d7",
    name="web-01 ü",
    bios_uuid="56 4d 00 11 22 33 44 55-66 77 88 99 aa bb cc dd",
    location_uuid="00 11 22 33 44 55 66 77-88 99 aa bb cc dd ee ff",
)

# The bytes the simulated ESX sends first (initiate=True, offers AUTH and COM-PORT).
OFFER = bytes([IAC, WILL, 0, IAC, DO, 0, IAC, WILL, 3, IAC, DO, 3, IAC, WILL, 232]) + bytes(
    [IAC, WILL, 37, IAC, WILL, 44]
)
# What a vSPC answers: accept BINARY/SGA/232, refuse AUTHENTICATION and COM-PORT.
ANSWER = bytes([IAC, DO, 0, IAC, WILL, 0, IAC, DO, 3, IAC, WILL, 3, IAC, DO, 232]) + bytes(
    [IAC, DONT, 37, IAC, DONT, 44]
)


def frame(cmd: int, payload: bytes = b"") -> bytes:
    """An option-232 frame built by hand (payload already escaped by the caller)."""
    return bytes([IAC, SB, 232, cmd]) + payload + bytes([IAC, SE])


def dbl(b: bytes) -> bytes:
    out = bytearray()
    for x in b:
        out.append(x)
        if x == 0xFF:
            out.append(0xFF)
    return bytes(out)


KS1 = frame(0, bytes(sorted(tw.EXT_NAMES)))


class RawPeer:
    """One accepted connection of the fake vSPC: raw bytes only."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.eof = False

    async def expect(self, needle: bytes, timeout: float = 5.0) -> bytes:
        """Read until ``needle`` appears; return everything up to and including it."""
        with trio.fail_after(timeout):
            while (k := self.buf.find(needle)) < 0:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"EOF waiting for {needle!r}; got {bytes(self.buf)!r}")
                self.buf += chunk
        out = bytes(self.buf[: k + len(needle)])
        del self.buf[: k + len(needle)]
        return out

    async def expect_exact(self, wanted: bytes, timeout: float = 5.0) -> None:
        got = await self.expect(wanted, timeout)
        assert got == wanted, f"unexpected bytes before {wanted!r}: {got!r}"

    async def read_until_eof(self, timeout: float = 5.0) -> bytes:
        with trio.fail_after(timeout):
            while True:
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    chunk = b""
                if not chunk:
                    break
                self.buf += chunk
        out = bytes(self.buf)
        self.buf.clear()
        return out

    async def send(self, data: bytes, *, per_byte: bool = False) -> None:
        if per_byte:
            for k in range(len(data)):
                await self.stream.send_all(data[k : k + 1])
        else:
            await self.stream.send_all(data)


async def fake_handshake(
    peer: RawPeer, vm: SimVM = VM, *, uri: bytes | None = b"Svic-console", per_byte: bool = False
) -> None:
    """The vSPC's side of connecting, by bytes: negotiation, KS, DO-PROXY, identity."""
    await peer.expect_exact(OFFER)
    await peer.send(ANSWER, per_byte=per_byte)
    await peer.expect_exact(KS1)
    if uri is not None:
        await peer.expect_exact(frame(70, uri))
    reply = frame(1, bytes([1, 3, 41, 43, 45, 71, 73, 81, 83]))
    if uri is not None:
        reply += frame(71)
    reply += frame(81) + frame(83)
    await peer.send(reply, per_byte=per_byte)
    await peer.expect_exact(frame(80, vm.uuid.encode()))
    await peer.expect_exact(frame(82, vm.name.encode("utf-8")))


def port_of(listener: trio.SocketListener) -> int:
    return int(listener.socket.getsockname()[1])


async def open_pair(
    nursery: trio.Nursery,
    listener: trio.SocketListener,
    *,
    handshake: bool = True,
    uri: bytes | None = b"Svic-console",
    vm: SimVM = VM,
    **knobs: object,
) -> tuple[EsxConnection, RawPeer]:
    send, recv = trio.open_memory_channel[EsxConnection](1)

    async def esx() -> None:
        c = await EsxConnection.open(nursery, "127.0.0.1", port_of(listener), vm=vm, **knobs)  # type: ignore[arg-type]
        await send.send(c)

    nursery.start_soon(esx)
    peer = RawPeer(await listener.accept())
    if handshake:
        await fake_handshake(peer, vm, uri=uri)
    with trio.fail_after(5):
        conn = await recv.receive()
    return conn, peer
