"""Hybrid vsock handshake (Firecracker / Cloud Hypervisor), sans-IO.

Host -> guest: connect to the VM's Unix socket, send ``CONNECT <port>\\n`` and
read one line ``OK <n>\\n``. ``n`` is a port number whose meaning differs
between VMMs (Firecracker: the host-side ephemeral port; Cloud Hypervisor: the
same), so it is parsed and reported but never relied on. Any bytes after the OK
line in the same read are already stream data and are handed back untouched.

The server side (``ConnectRequestParser``) parses the ``CONNECT <port>\\n``
line, as a VMM's muxer does; ``ok_reply`` builds its answer.
"""

from __future__ import annotations

MAX_LINE = 64
MAX_PORT = 2**32 - 1


class HybridError(ValueError):
    """A malformed, over-long or refused hybrid vsock handshake line."""


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= MAX_PORT:
        raise HybridError(f"hybrid vsock port {port!r} is not in 0..{MAX_PORT}")
    return port


def connect_request(port: int) -> bytes:
    """The client's request line for guest vsock *port*."""
    return b"CONNECT %d\n" % _check_port(port)


def ok_reply(n: int) -> bytes:
    """The muxer's acknowledgement line."""
    return b"OK %d\n" % _check_port(n)


def _parse_number(text: bytes, what: str, line: bytes) -> int:
    if not text or len(text) > 10 or not text.isdigit():
        raise HybridError(f"malformed hybrid vsock {what} line {line!r}")
    value = int(text)
    if value > MAX_PORT:
        raise HybridError(f"hybrid vsock {what} port {value} out of range in {line!r}")
    return value


class _LineParser:
    """Reads exactly one newline-terminated line of at most MAX_LINE bytes."""

    _what = "line"

    def __init__(self) -> None:
        self._buf = bytearray()
        self._value: int | None = None
        self._error: HybridError | None = None

    @property
    def done(self) -> bool:
        return self._value is not None

    @property
    def value(self) -> int | None:
        return self._value

    def feed(self, data: bytes) -> tuple[int | None, bytes]:
        """Returns (number, rest) once the line is complete, (None, b"") before.

        After completion further data is returned as (None, data).
        """
        if self._error is not None:
            raise self._error
        if self._value is not None:
            return None, bytes(data)
        try:
            return self._feed(bytes(data))
        except HybridError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def _feed(self, data: bytes) -> tuple[int | None, bytes]:
        nl = data.find(b"\n")
        if nl < 0:
            if len(self._buf) + len(data) > MAX_LINE:
                raise HybridError(
                    f"hybrid vsock {self._what} line over {MAX_LINE} bytes:"
                    f" {bytes(self._buf[:32]) + data[:32]!r}..."
                )
            self._buf += data
            return None, b""
        if len(self._buf) + nl + 1 > MAX_LINE:
            raise HybridError(f"hybrid vsock {self._what} line over {MAX_LINE} bytes")
        line = bytes(self._buf) + data[:nl]
        self._buf.clear()
        value = self._parse(line)
        self._value = value
        return value, data[nl + 1 :]

    def eof_error(self) -> HybridError:
        """The error to report when the peer closes before the line is complete."""
        return HybridError(
            f"hybrid vsock peer closed before the {self._what} line"
            + (f" (got {bytes(self._buf)!r})" if self._buf else "")
        )

    def _parse(self, line: bytes) -> int:
        raise NotImplementedError


class HybridReplyParser(_LineParser):
    """Client side: parses the muxer's ``OK <n>`` reply."""

    _what = "reply"

    def _parse(self, line: bytes) -> int:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.startswith(b"OK "):
            raise HybridError(f"hybrid vsock connect refused or malformed reply {line!r}")
        return _parse_number(line[3:], "reply", line)


class ConnectRequestParser(_LineParser):
    """Server side: parses a client's ``CONNECT <port>`` request."""

    _what = "CONNECT"

    def _parse(self, line: bytes) -> int:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.startswith(b"CONNECT "):
            raise HybridError(f"malformed hybrid vsock request {line!r}")
        return _parse_number(line[8:], "CONNECT", line)
