"""A pty as the serial device: configured through pyserial (raw mode, so the
line is 8-bit clean), driven through trio's FdStream, reopened when it goes away."""

from __future__ import annotations

import functools
import os
import termios
from pathlib import Path

import trio
import trio.testing

from common.io.rawtty import IFLAG_OFF as RAW_IFLAG_OFF
from common.io.rawtty import LFLAG_OFF as RAW_LFLAG_OFF
from common.io.rawtty import OFLAG_OFF as RAW_OFLAG_OFF
from relay.config import SerialListener
from relay.ingress.serialdev import open_device
from tests.relay.relayfix import (
    Appliance,
    pattern,
    relay_config,
    roundtrip,
    start_relay,
    tcp_egress,
)


def test_pyserial_configures_the_tty() -> None:
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        fd = open_device(
            SerialListener(
                name="s", vm="v", device=Path(name), baudrate=9600, stopbits=2, rtscts=True
            )
        )
        try:
            _iflag, oflag, cflag, lflag, ispeed, ospeed, _cc = termios.tcgetattr(fd)
            assert ispeed == ospeed == termios.B9600
            # (a pty keeps speed, stop bits and flow control; it drops parity/size)
            assert cflag & termios.CSTOPB and cflag & termios.CRTSCTS
            assert not lflag & (termios.ICANON | termios.ECHO)  # raw
            assert not oflag & termios.OPOST
        finally:
            os.close(fd)
    finally:
        os.close(master)
        os.close(slave)


async def test_pty_byte_exact_and_hangup() -> None:
    app = Appliance()
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port), serial=(SerialListener(name="tty", vm="vm9", device=Path(name)),)
        )
        d = await start_relay(n, cfg)
        (rec,) = await app.wait_streams(1)  # a tty is dispatched as soon as it opens
        assert (rec.header.kind, rec.header.vm) == ("serial", "vm9")
        vm_end = trio.lowlevel.FdStream(master)  # the VM's side of the serial line
        data = pattern(20_000, seed=5)  # every byte value: raw mode must not touch any
        assert await roundtrip(vm_end, data) == data
        assert bytes(rec.data) == data
        await vm_end.aclose()  # hang-up: the relay's reads fail with EIO, the stream ends
        with trio.fail_after(10):
            await rec.closed.wait()
            await d.wait_active_at_most(0)
        assert d.metrics.active() == 0
        n.cancel_scope.cancel()


async def test_device_comes_back(tmp_path: Path) -> None:
    """The configured device path (a symlink, as udev makes for serial adapters)
    goes away with its pty and comes back with a new one: the relay reopens it."""
    app = Appliance()
    link = tmp_path / "ttyVM"
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port), serial=(SerialListener(name="tty", vm="vm9", device=link),)
        )
        await start_relay(n, cfg)  # no device yet: the relay retries with backoff
        for i in range(2):
            master, slave = os.openpty()
            os.symlink(os.ttyname(slave), link)
            os.close(slave)
            rec = (await app.wait_streams(i + 1))[i]
            vm_end = trio.lowlevel.FdStream(master)
            data = pattern(10_000, seed=i)
            assert await roundtrip(vm_end, data) == data
            link.unlink()
            await vm_end.aclose()  # unplugged
            with trio.fail_after(10):
                await rec.closed.wait()
            assert bytes(rec.data) == data
        n.cancel_scope.cancel()


def test_raw_mode_leaves_every_byte_alone() -> None:
    """A tty starts cooked (ICRNL, IXON, OPOST|ONLCR, ISIG, ICANON, ECHO): every flag
    that could change, eat or echo a byte is off once the relay opened it, 8 bits."""
    master, slave = os.openpty()
    try:
        fd = open_device(SerialListener(name="s", vm="v", device=Path(os.ttyname(slave))))
        try:
            iflag, oflag, cflag, lflag, _i, _o, cc = termios.tcgetattr(fd)
            assert iflag & RAW_IFLAG_OFF == 0
            assert oflag & RAW_OFLAG_OFF == 0
            assert lflag & RAW_LFLAG_OFF == 0
            assert cflag & termios.CSIZE == termios.CS8 and not cflag & termios.PARENB
            assert (cc[termios.VMIN], cc[termios.VTIME]) == (1, 0)
        finally:
            os.close(fd)
    finally:
        os.close(master)
        os.close(slave)


async def test_the_appliance_ending_its_side_ends_the_stream() -> None:
    """A tty has no half-close: when the appliance ends the relayed stream (a sealed
    session's handshake timed out), the line's stream ends too. The line stays open and
    the next stream starts when the VM speaks, with what it said: no stream after stream
    for a line nobody speaks on. (Waiting for the tty's EOF left the VM unreachable.)"""
    streams: list[trio.SocketStream] = []
    arrived = trio.Condition()

    async def handle(stream: trio.SocketStream) -> None:
        streams.append(stream)
        async with arrived:
            arrived.notify_all()
        await trio.sleep_forever()

    async def nth(n: int) -> trio.SocketStream:
        async with arrived:
            while len(streams) < n:
                await arrived.wait()
        return streams[n - 1]

    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    vm_end = trio.lowlevel.FdStream(master)
    async with trio.open_nursery() as n:
        listeners = await n.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        cfg = relay_config(
            tcp_egress(port), serial=(SerialListener(name="tty", vm="vm9", device=Path(name)),)
        )
        d = await start_relay(n, cfg)
        for i in range(3):
            with trio.fail_after(10):
                data = pattern(4096, seed=i)
                await vm_end.send_all(data)  # the VM speaks: a stream carries it
                stream = await nth(i + 1)
                got = bytearray()
                while not got.endswith(data):  # after the stream's origin header
                    got += await stream.receive_some(65536)
                await stream.send_eof()  # the appliance is done with this stream
                assert await _drain(stream) == 0  # and the relay ends it
                await d.wait_active_at_most(0)
            await trio.testing.wait_all_tasks_blocked()
            assert len(streams) == i + 1  # the VM is silent: no new stream
        await vm_end.aclose()
        n.cancel_scope.cancel()


async def _drain(stream: trio.SocketStream) -> int:
    """Read to EOF; the byte count."""
    total = 0
    while chunk := await stream.receive_some(65536):
        total += len(chunk)
    return total
