"""Console channels from the guest towards the host: serial device, AF_VSOCK, hybrid vsock.

A connector is an async callable returning a connected ``Channel`` (a trio Stream
plus a ``drain()`` that waits until written bytes have left the guest).

* serial: a tty device (``/dev/ttyS1``; in tests a pty slave), configured raw
  with pyserial (termios), I/O through ``trio.lowlevel.FdStream``; ``drain()`` is
  ``tcdrain``.
* vsock: ``AF_VSOCK`` to ``(cid, port)``, cid 2 being the host.
* hybrid vsock (Firecracker / Cloud Hypervisor): a guest connection to vsock port
  P appears on the host as a connection to the Unix socket ``<uds_path>_<P>``;
  from inside this machine's tests the "guest" connects to that socket directly.
* unix / tcp: plain sockets, for labs and debugging.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import termios
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from common.io.rawtty import make_raw


class Channel:
    def __init__(self, stream: trio.abc.Stream, name: str) -> None:
        self.stream = stream
        self.name = name

    async def drain(self) -> None:
        """Wait until bytes already sent have left this side."""
        return None

    def unsent(self) -> int | None:
        """Bytes written but not yet taken by the peer, if the kernel can say
        (``SIOCOUTQ``; for AF_UNIX an over-estimate). None when unknown."""
        if isinstance(self.stream, trio.SocketStream):
            fd = self.stream.socket.fileno()
            n = _outq(fd)
            # once the peer has closed, its unread bytes are gone and the count reads
            # 0: only a count taken while the peer was still there means anything
            return None if _hung_up(fd) else n
        return None

    async def aclose(self) -> None:
        await self.stream.aclose()


class SerialStream(trio.abc.Stream):
    """A tty as a trio Stream: reads through ``FdStream``; writes in a worker thread,
    looping over partial writes there (a tty takes a few KiB per write, and one trio
    wake-up per few KiB costs more than the copy). Cancellable within 0.1 s; a
    cancelled write may have written part of the data (the console link re-sends)."""

    def __init__(self, fd: int) -> None:
        self._in = trio.lowlevel.FdStream(fd)
        self._fd = self._in.fileno()

    def fileno(self) -> int:
        return self._fd

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                poller.poll(100)
                trio.from_thread.check_cancelled()
                continue
            except OSError as e:
                raise trio.BrokenResourceError(f"serial write: {e}") from e
            view = view[n:]

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.to_thread.run_sync(self._write_all, bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self._in.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._in.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._in.aclose()


class SerialChannel(Channel):
    """``drain_fd`` is a second, blocking descriptor of the same device for tcdrain
    (the stream's descriptor is non-blocking, and tcdrain would not wait on it)."""

    def __init__(self, stream: trio.abc.Stream, drain_fd: int, port: Any, name: str) -> None:
        super().__init__(stream, name)
        self.drain_fd = drain_fd
        self.port = port

    async def drain(self) -> None:
        try:
            await trio.to_thread.run_sync(termios.tcdrain, self.drain_fd, abandon_on_cancel=True)
        except (termios.error, OSError):
            pass

    def unsent(self) -> int | None:
        return _outq(self.drain_fd)

    async def aclose(self) -> None:
        await self.stream.aclose()
        for close in (lambda: os.close(self.drain_fd), self.port.close):
            try:
                close()
            except OSError:
                pass


def _outq(fd: int) -> int | None:
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    except OSError:
        return None


def _hung_up(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0x2000))
    return bool(p.poll(0))


Connector = Callable[[], Awaitable[Channel]]


def serial_connector(path: str, baud: int = 115200) -> Connector:
    async def connect() -> Channel:
        import serial  # pyserial

        def open_port() -> Any:
            return serial.Serial(
                path,
                baudrate=baud,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                xonxoff=False,
                rtscts=False,
                timeout=0,
            )

        try:
            port = await trio.to_thread.run_sync(open_port)
        except serial.SerialException as e:
            raise OSError(f"serial {path}: {e}") from e
        # raw 8-bit, no flow control, reads that wait for a byte (common.io.rawtty)
        try:
            make_raw(port.fileno(), local=True)
        except termios.error as e:
            port.close()
            raise OSError(f"serial {path}: {e}") from e
        drain_fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        fd = os.dup(port.fileno())
        return SerialChannel(SerialStream(fd), drain_fd, port, f"serial:{path}")

    return connect


def vsock_connector(cid: int, port: int) -> Connector:
    async def connect() -> Channel:
        family = getattr(socket, "AF_VSOCK", None)
        if family is None:
            raise OSError("AF_VSOCK is not available on this system")
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        try:
            await sock.connect((cid, port))
        except BaseException:
            sock.close()
            raise
        return Channel(trio.SocketStream(sock), f"vsock:{cid}:{port}")

    return connect


def unix_connector(path: str) -> Connector:
    async def connect() -> Channel:
        return Channel(await trio.open_unix_socket(path), f"unix:{path}")

    return connect


def hybrid_vsock_connector(uds_path: str, port: int) -> Connector:
    """Guest->host hybrid vsock: the host side listens on ``<uds_path>_<port>``."""
    path = f"{uds_path}_{port}"

    async def connect() -> Channel:
        ch = await unix_connector(path)()
        ch.name = f"hybrid-vsock:{path}"
        return ch

    return connect


def tcp_connector(host: str, port: int) -> Connector:
    async def connect() -> Channel:
        return Channel(await trio.open_tcp_stream(host, port), f"tcp:{host}:{port}")

    return connect
