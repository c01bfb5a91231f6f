"""A serial device or pty as ingress: configured through pyserial (termios: speed,
framing, flow control, raw mode), then driven by trio through an FdStream.

A tty never says EOF while the port exists, so the stream is dispatched as soon
as the device opens. When it goes away (pty master closed: EIO; USB adapter
unplugged) the stream ends and the relay reopens the device with backoff."""

from __future__ import annotations

import logging
import os
import termios
from typing import Any

import serial
import trio

from relay.config import SerialListener
from relay.ingress import IngressSink, Origin, wait_done

log = logging.getLogger("relay.ingress.serial")


def open_device(cfg: SerialListener) -> int:
    """Open and configure the tty; returns a new fd owned by the caller."""
    port = serial.Serial()
    port.port = str(cfg.device)
    port.baudrate = cfg.baudrate
    port.bytesize = cfg.bytesize
    port.parity = cfg.parity
    port.stopbits = cfg.stopbits
    port.xonxoff = cfg.xonxoff
    port.rtscts = cfg.rtscts
    port.exclusive = True
    port.open()
    try:
        fd = os.dup(port.fileno())
    finally:
        port.close()
    try:
        # pyserial leaves VMIN=0/VTIME=0 (it times reads with select), where an
        # empty non-blocking read returns b"" and looks like EOF. VMIN=1 makes it
        # EAGAIN, so readiness-driven reads (and splice) behave.
        attrs = termios.tcgetattr(fd)
        attrs[6][termios.VMIN] = 1
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except BaseException:
        os.close(fd)
        raise
    return fd


async def serve(
    cfg: SerialListener, sink: IngressSink, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    task_status.started(str(cfg.device))
    backoff = sink.backoff()
    origin = Origin(cfg.name, "serial", cfg.vm, cfg.label, str(cfg.device))
    down_logged = False
    while True:
        try:
            # Opening a tty can block on carrier detect; pyserial uses O_NONBLOCK.
            fd = open_device(cfg)
        except (OSError, serial.SerialException) as e:
            if not down_logged:
                log.warning("route=%s vm=%s cannot open %s: %s", cfg.name, cfg.vm, cfg.device, e)
                down_logged = True
            await backoff.sleep()
            continue
        down_logged = False
        backoff.reset()
        log.info("route=%s vm=%s opened %s at %d baud", cfg.name, cfg.vm, cfg.device, cfg.baudrate)
        done = await sink.dispatch(trio.lowlevel.FdStream(fd), origin, track=True)
        await wait_done(done)
        # A device that fails at once (EIO on every read) must not spin.
        await backoff.sleep()
