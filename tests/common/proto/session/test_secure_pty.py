"""The sealed transport over a real 8-bit line: a raw pty pair stands in for the VM's
serial port, with boot noise from the guest before the tether speaks."""

from __future__ import annotations

import os
import pty
import random
import tty

import trio

from common.proto.session.secure import Established, Record, Role, SecureChannel

from .test_secure import SECRET

BOOT_NOISE = b"[    0.000000] Linux version 6.1.0\r\n\xff\x00\x1b[0m" * 200  # ~10 KiB


async def run_end(
    stream: trio.lowlevel.FdStream, channel: SecureChannel, payloads: list[bytes], want: int
) -> list[bytes]:
    """Drive one end: read, feed, write; send ``payloads`` once established."""
    got: list[bytes] = []
    out_send, out_receive = trio.open_memory_channel[bytes](1000)

    async def writer() -> None:
        async with out_receive:
            async for chunk in out_receive:
                await stream.send_all(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        async with out_send:
            await out_send.send(channel.data_to_send())
            established = False
            while not established or len(got) < want:
                for event in channel.receive_data(await stream.receive_some(65536)):
                    if isinstance(event, Established):
                        established = True
                        for payload in payloads:
                            channel.send_record(payload)
                    else:
                        assert isinstance(event, Record), event
                        got.append(event.payload)
                await out_send.send(channel.data_to_send())
    return got


async def test_sealed_records_over_a_raw_pty_after_boot_noise() -> None:
    rng = random.Random(13)
    to_guest = [rng.randbytes(rng.randrange(0, 16384)) for _ in range(40)]
    to_host = [rng.randbytes(rng.randrange(0, 16384)) for _ in range(40)]
    master, slave = pty.openpty()
    tty.setraw(slave)  # 8 bits, no echo, no CR/LF mapping: a serial line
    os.write(slave, BOOT_NOISE)  # the guest boots before its tether runs
    host = trio.lowlevel.FdStream(master)
    guest = trio.lowlevel.FdStream(slave)
    appliance = SecureChannel(Role.INITIATOR, [SECRET])
    tether = SecureChannel(Role.RESPONDER, [b"an older secret, 32 bytes long..", SECRET])
    appliance.start()
    results: dict[str, list[bytes]] = {}

    async def end(
        name: str, stream: trio.lowlevel.FdStream, ch: SecureChannel, out: list[bytes], want: int
    ) -> None:
        results[name] = await run_end(stream, ch, out, want)

    with trio.fail_after(30):
        async with host, guest, trio.open_nursery() as nursery:
            nursery.start_soon(end, "host", host, appliance, to_guest, len(to_host))
            nursery.start_soon(end, "guest", guest, tether, to_host, len(to_guest))
    assert results["guest"] == to_guest and results["host"] == to_host
    assert appliance._scanner.junk == len(BOOT_NOISE)  # all of it crossed the line first
