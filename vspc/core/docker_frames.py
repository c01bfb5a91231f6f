"""Docker's multiplexed stream format, sans-IO (logs, attach and exec without a tty).

Each frame is an 8-byte header and a payload: the stream (0 stdin, 1 stdout,
2 stderr, 3 the daemon's own error text), three zero bytes, the payload's
length as a 32-bit big-endian number. ``frame`` makes one (an empty payload
makes none: docker never sends empty frames); ``Deframer`` reads them from any
chunking, refusing a header that breaks the format or announces more than
``max_payload`` bytes (its buffer never holds more than one frame).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">BxxxI")
HEADER_LEN = HEADER.size  # 8
MAX_PAYLOAD = 1 << 20


class StdStream(enum.IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2
    SYSTEMERR = 3


class FrameError(ValueError):
    """Bytes that are not docker's multiplexed format."""


def frame(stream: StdStream, payload: bytes) -> bytes:
    if not payload:
        return b""
    return HEADER.pack(stream, len(payload)) + payload


@dataclass(frozen=True)
class Frame:
    stream: StdStream
    payload: bytes


class Deframer:
    """Bytes in, ``Frame``s out; ``FrameError`` for a bad header (the stream is then unusable)."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self._need: tuple[StdStream, int] | None = None  # the header read, its payload awaited

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER_LEN:
                    return out
                self._need = self._header(bytes(self._buf[:HEADER_LEN]))
                del self._buf[:HEADER_LEN]
            stream, n = self._need
            if len(self._buf) < n:
                return out
            out.append(Frame(stream, bytes(self._buf[:n])))
            del self._buf[:n]
            self._need = None

    def _header(self, head: bytes) -> tuple[StdStream, int]:
        if head[1:4] != b"\0\0\0" or head[0] > StdStream.SYSTEMERR:
            raise FrameError(f"not a multiplexed stream header: {head.hex()}")
        stream, n = HEADER.unpack(head)
        if n > self.max_payload:
            raise FrameError(f"frame of {n} bytes (at most {self.max_payload})")
        return StdStream(stream), n

    def at_boundary(self) -> bool:
        """No partial frame is held (the stream may end here)."""
        return self._need is None and not self._buf
