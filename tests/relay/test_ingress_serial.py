"""A pty as the serial device: configured through pyserial (raw mode, so the
line is 8-bit clean), driven through trio's FdStream, reopened when it goes away."""

from __future__ import annotations

import os
import termios
from pathlib import Path

import trio

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
