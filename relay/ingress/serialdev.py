"""A serial device or pty as ingress: configured through pyserial (termios: speed,
framing, flow control), then put in raw 8-bit mode here and driven by trio.

A tty never says EOF while the port exists, so the stream is dispatched as soon
as the device opens. When it goes away (pty master closed: EIO; USB adapter
unplugged) the stream ends and the relay reopens the device with backoff.

A line cannot carry a half-close either: when the appliance ends its side (a sealed
session that timed out its handshake, an appliance restart), ``TtyStream.send_eof``
ends the line's stream too, so the pump finishes (cleanly: ``eof``) and the relay
reopens the device and dispatches a new stream. Waiting for the tty's own EOF would
leave the line relayed into a closed stream for ever: the appliance would never see
the VM again.
"""

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

# termios flags that would alter bytes on the way through (c_iflag, c_oflag, c_lflag):
# break and parity marking, 8th-bit stripping, CR/LF mapping, XON/XOFF, output
# post-processing, echo, canonical lines and the ^C/^Z/^\ signal characters
RAW_IFLAG_OFF = (
    termios.IGNBRK
    | termios.BRKINT
    | termios.PARMRK
    | termios.ISTRIP
    | termios.INLCR
    | termios.IGNCR
    | termios.ICRNL
    | termios.IXON
    | termios.IXOFF
    | termios.IXANY
    | termios.IMAXBEL
    | termios.INPCK
)
RAW_OFLAG_OFF = termios.OPOST
RAW_LFLAG_OFF = termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN


def make_raw(fd: int, *, xonxoff: bool = False) -> None:
    """Raw 8-bit mode, no parity (cfmakeraw's), reads that wait for one byte.

    ``xonxoff`` keeps software flow control (an operator's explicit choice: it then
    takes 0x11 and 0x13 out of the data). pyserial's VMIN=0/VTIME=0 (it times reads
    with select) would make an empty non-blocking read return b"" and look like EOF;
    VMIN=1 makes it EAGAIN, so readiness-driven reads behave."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    keep = (termios.IXON | termios.IXOFF) if xonxoff else 0
    iflag &= ~(RAW_IFLAG_OFF & ~keep)
    oflag &= ~RAW_OFLAG_OFF
    lflag &= ~RAW_LFLAG_OFF
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8 | termios.CREAD
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


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
    if cfg.bytesize == 8 and cfg.parity == "N":
        try:
            make_raw(fd, xonxoff=cfg.xonxoff)
        except BaseException:
            os.close(fd)
            raise
    else:  # a 7-bit or parity line as configured; still no canonical mode or echo
        _wait_for_a_byte(fd)
    return fd


def _wait_for_a_byte(fd: int) -> None:
    try:
        attrs = termios.tcgetattr(fd)
        attrs[6][termios.VMIN] = 1
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except BaseException:
        os.close(fd)
        raise


class TtyStream(trio.abc.HalfCloseableStream):
    """The tty's ``FdStream`` with a half-close that ends the line's stream: after
    ``send_eof`` (the far side ended) a pending or later read returns b"" at once."""

    def __init__(self, fd: int) -> None:
        self._fd = trio.lowlevel.FdStream(fd)
        self._eof = False
        self._reading: trio.CancelScope | None = None

    def fileno(self) -> int:
        return self._fd.fileno()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._fd.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._fd.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        self._eof = True
        if self._reading is not None:
            self._reading.cancel()
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        # a read cancelled in its wait has read nothing: no byte is lost or reordered
        with trio.CancelScope() as scope:
            if self._eof:
                scope.cancel()
            self._reading = scope
            try:
                return await self._fd.receive_some(max_bytes)
            finally:
                self._reading = None
        await trio.lowlevel.checkpoint()
        return b""

    async def aclose(self) -> None:
        await self._fd.aclose()


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
        except (OSError, serial.SerialException, termios.error) as e:
            if not down_logged:
                log.warning("route=%s vm=%s cannot open %s: %s", cfg.name, cfg.vm, cfg.device, e)
                down_logged = True
            await backoff.sleep()
            continue
        down_logged = False
        backoff.reset()
        log.info("route=%s vm=%s opened %s at %d baud", cfg.name, cfg.vm, cfg.device, cfg.baudrate)
        done = await sink.dispatch(TtyStream(fd), origin, track=True)
        await wait_done(done)
        # A device that fails at once (EIO on every read) must not spin.
        await backoff.sleep()
