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

import os
import socket
import termios
from collections.abc import Awaitable, Callable
from typing import Any

import trio


class Channel:
    def __init__(self, stream: trio.abc.Stream, name: str) -> None:
        self.stream = stream
        self.name = name

    async def drain(self) -> None:
        """Wait until bytes already sent have left this side."""
        return None

    async def aclose(self) -> None:
        await self.stream.aclose()


class SerialChannel(Channel):
    def __init__(self, stream: trio.lowlevel.FdStream, fd: int, port: Any, name: str) -> None:
        super().__init__(stream, name)
        self.fd = fd
        self.port = port

    async def drain(self) -> None:
        try:
            await trio.to_thread.run_sync(termios.tcdrain, self.fd, abandon_on_cancel=True)
        except termios.error:
            pass

    async def aclose(self) -> None:
        await self.stream.aclose()
        try:
            self.port.close()
        except OSError:
            pass


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
        fd = os.dup(port.fileno())
        os.set_blocking(fd, False)
        return SerialChannel(trio.lowlevel.FdStream(fd), fd, port, f"serial:{path}")

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
