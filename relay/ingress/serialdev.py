"""A serial device or pty as ingress: configured through pyserial (termios: speed,
framing, flow control), then put in raw 8-bit mode here and driven by trio.

A tty never says EOF while the port exists, so the first stream is dispatched as soon
as the device opens. When it goes away (pty master closed: EIO; USB adapter
unplugged) the stream ends and the relay reopens the device with backoff.

A line cannot carry a half-close either: when the appliance ends its side (a sealed
session whose handshake timed out, an appliance restart), ``TtyStream.send_eof`` ends
the line's stream too (the pump finishes cleanly, ``eof``). The device stays open (no
reopen, which would flush what the VM sends meanwhile) and the next stream is
dispatched when the VM next sends something: a tether on the line says so when it
starts a sealed connection, and a line nobody speaks on any more (its tether moved to
vsock) does not open stream after stream, each taking the VM's session over from the
live connection. Waiting for the tty's own EOF instead left the line relayed into a
closed stream for ever: the appliance never saw the VM again.
"""

from __future__ import annotations

import logging
import os
import select
import termios
from typing import Any

import serial
import trio

from common.io.rawtty import make_raw
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
    """A dup of the line's fd as a stream, with a half-close that ends it: after
    ``send_eof`` (the far side ended) a pending or later read returns b"" at once.
    Closing it leaves the line open. ``line_ok``: the appliance ended the stream, the
    line itself never failed (no EOF, EIO or other error read from the tty)."""

    def __init__(self, fd: int) -> None:
        self._fd = trio.lowlevel.FdStream(os.dup(fd))
        self.ended_by_peer = False
        self.line_failed = False
        self._reading: trio.CancelScope | None = None

    @property
    def line_ok(self) -> bool:
        return self.ended_by_peer and not self.line_failed

    def fileno(self) -> int:
        return self._fd.fileno()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._fd.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._fd.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        self.ended_by_peer = True
        if self._reading is not None:
            self._reading.cancel()
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        # a read cancelled in its wait has read nothing: no byte is lost or reordered
        with trio.CancelScope() as scope:
            if self.ended_by_peer:
                scope.cancel()
            self._reading = scope
            try:
                data = await self._fd.receive_some(max_bytes)
            except (trio.BrokenResourceError, OSError):
                self.line_failed = True
                raise
            finally:
                self._reading = None
            self.line_failed |= not data  # a hung-up tty reads as EOF
            return data
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
        try:
            await _carry_line(cfg, fd, sink, origin)
        finally:
            trio.lowlevel.notify_closing(fd)
            os.close(fd)
        # A device that fails at once (EIO on every read) must not spin.
        await backoff.sleep()


async def _carry_line(cfg: SerialListener, fd: int, sink: IngressSink, origin: Origin) -> None:
    """Streams over the open line, one after another, for as long as the appliance is
    what ends them; returns when one ends otherwise (the device failed, or was refused)."""
    while True:
        stream = TtyStream(fd)
        done = await sink.dispatch(stream, origin, track=True)
        await wait_done(done)
        if not stream.line_ok:
            return
        log.info(
            "route=%s vm=%s the appliance ended the stream; the next starts when %s speaks",
            cfg.name,
            cfg.vm,
            cfg.device,
        )
        await trio.lowlevel.wait_readable(fd)
        if _hung_up(fd):  # the far end of the line went away: reopen, do not relay that
            return


def _hung_up(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLHUP | select.POLLERR)
    return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in p.poll(0))
