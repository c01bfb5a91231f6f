"""Incremental peer-link frame decoder (sans-IO); the frame codec is ``frames``."""

from __future__ import annotations

import struct

from common.proto.link.frames import (
    DEFAULT_MAX_PAYLOAD,
    HEADER,
    HEADER_SIZE,
    MAX_OFFSET,
    MAX_PAYLOAD_LIMIT,
    PENDING_MIN,
    Data,
    Frame,
    FrameType,
    LinkProtocolError,
    decode_payload,
)

_U64 = struct.Struct("!Q")
_MAX_TYPE = max(FrameType)
_DATA = int(FrameType.DATA)


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the complete frames so far.

    Memory is bounded by one frame (``HEADER_SIZE + max_payload``). Large DATA
    payloads that span reads are assembled directly into their own buffer
    (handed out as a ``bytearray``), so each payload byte is copied once; the
    caller may reuse the buffer it fed. After a ``LinkProtocolError`` the decoder
    is dead and raises again on every feed.

    Passing: the caller may instead move a large payload's bytes itself (from its
    socket straight to where they go, e.g. with splice) and report them with
    ``pass_bytes(n)``; a payload passed from its first byte is passed to its last,
    and no ``Data`` frame is made for it (the caller delivers the bytes).
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if not 0 < max_payload <= MAX_PAYLOAD_LIMIT + 8:
            raise ValueError("max_payload out of range")
        self.max_payload = max_payload
        self._buf = bytearray()  # a partial frame (header straddling reads, or small)
        # a large DATA payload being filled: [stream_id, offset, payload, filled]
        self._pending: tuple[int, int, bytearray] | None = None
        self._plen = 0  # its length (the bytearray is made when bytes are first copied)
        self._filled = 0
        self._passed = False  # its bytes go through pass_bytes (none copied)
        self._error: LinkProtocolError | None = None

    @property
    def buffered(self) -> int:
        held = self._pending is not None and not self._passed
        return len(self._buf) + (self._filled if held else 0)

    def receive_buffer(self) -> memoryview | None:
        """The unfilled rest of a large DATA payload being assembled, if any.

        The caller may receive straight into it (no copy through its own read
        buffer) and then report the count with ``filled(n)``; None when the next
        bytes start a new frame (use ``feed``).
        """
        if self._pending is None or self._error is not None or self._passed:
            return None
        return memoryview(self._payload())[self._filled :]

    def _payload(self) -> bytearray:
        assert self._pending is not None
        sid, off, pay = self._pending
        if len(pay) != self._plen:
            pay = bytearray(self._plen)
            self._pending = (sid, off, pay)
        return pay

    @property
    def passing(self) -> bool:
        """A payload is being passed: its remaining bytes must be passed too."""
        return self._passed

    def pass_target(self) -> tuple[int, int, int] | None:
        """(stream id, offset, bytes left) of a large DATA payload whose bytes may be
        passed (none copied yet: it is being passed, or nothing of it arrived)."""
        if self._pending is None or self._error is not None:
            return None
        if self._filled and not self._passed:
            return None
        sid, off, _pay = self._pending
        return sid, off + self._filled, self._plen - self._filled

    def pass_bytes(self, n: int) -> tuple[int, int]:
        """``n`` bytes of the payload went elsewhere; returns their (stream id, offset)."""
        target = self.pass_target()
        if target is None or not 0 < n <= target[2]:
            raise ValueError("pass_bytes() without a payload to pass")
        sid, off, _left = target
        self._passed = True
        self._filled += n
        if self._filled == self._plen:
            self._pending = None
            self._passed = False
        return sid, off

    def filled(self, n: int) -> list[Frame]:
        """``n`` bytes were written into ``receive_buffer()``; the frames completed by them."""
        if self._error is not None:
            raise self._error
        pending = self._pending
        if pending is None:
            if n:
                raise ValueError("filled() without a receive buffer")
            return []
        sid, off, pay = pending
        if self._passed or not 0 <= n <= self._plen - self._filled:
            raise ValueError("filled() beyond the receive buffer")
        self._filled += n
        if self._filled < self._plen:
            return []
        self._pending = None
        return [Data(sid, off, pay)]

    def _header(self, buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, int, int]:
        ftype, flags, sid, length = HEADER.unpack_from(buf, pos)
        if length > self.max_payload:
            raise LinkProtocolError(
                f"frame of {length} bytes exceeds the limit of {self.max_payload}"
            )
        if ftype > _MAX_TYPE:
            raise LinkProtocolError(f"unknown frame type {ftype}")
        return ftype, flags, sid, length

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if self._error is not None:
            raise self._error
        try:
            with memoryview(data) as mv:
                return self._feed(mv.cast("B") if mv.format != "B" else mv)
        except LinkProtocolError as e:
            self._error = e
            self._buf = bytearray()
            self._pending = None
            self._passed = False
            raise

    def _feed(self, mv: memoryview) -> list[Frame]:
        frames: list[Frame] = []
        n = len(mv)
        i = 0
        if self._pending is not None:
            i = self._fill_pending(mv, frames)
            if self._pending is not None:
                return frames
        if self._buf:
            i = self._fill_buf(mv, i, frames)
            if self._buf:
                return frames
        while n - i >= HEADER_SIZE:
            ftype, flags, sid, length = self._header(mv, i)
            stop = i + HEADER_SIZE + length
            is_data = ftype == _DATA and sid != 0 and length >= 8
            if stop > n:
                if is_data and length - 8 >= PENDING_MIN and n - i >= HEADER_SIZE + 8:
                    self._start_pending(mv, i, sid, length)
                    return frames
                break
            if is_data:
                off = _U64.unpack_from(mv, i + HEADER_SIZE)[0]
                if off > MAX_OFFSET:
                    raise LinkProtocolError("DATA offset out of range")
                frames.append(Data(sid, off, bytes(mv[i + HEADER_SIZE + 8 : stop])))
            else:
                frames.append(decode_payload(ftype, flags, sid, bytes(mv[i + HEADER_SIZE : stop])))
            i = stop
        if i < n:
            self._buf = bytearray(mv[i:n])
        return frames

    def _fill_pending(self, mv: memoryview, frames: list[Frame]) -> int:
        """Go on filling the large DATA payload being assembled; returns bytes used."""
        if self._passed:
            raise ValueError("feed() while a payload is being passed")
        pay = self._payload()
        assert self._pending is not None
        sid, off, _pay = self._pending
        k = min(self._plen - self._filled, len(mv))
        pay[self._filled : self._filled + k] = mv[:k]
        self._filled += k
        if self._filled == self._plen:
            frames.append(Data(sid, off, pay))
            self._pending = None
        return k

    def _fill_buf(self, mv: memoryview, i: int, frames: list[Frame]) -> int:
        """Go on filling the partial frame in ``_buf`` from ``mv[i:]``; returns the new ``i``."""
        buf, n = self._buf, len(mv)
        if len(buf) < HEADER_SIZE:
            k = min(HEADER_SIZE - len(buf), n - i)
            buf += mv[i : i + k]
            i += k
            if len(buf) < HEADER_SIZE:
                return i
        ftype, flags, sid, length = self._header(buf, 0)
        total = HEADER_SIZE + length
        k = min(total - len(buf), n - i)
        buf += mv[i : i + k]
        i += k
        if len(buf) == total:
            frames.append(decode_payload(ftype, flags, sid, bytes(buf[HEADER_SIZE:])))
            self._buf = bytearray()
        return i

    def _start_pending(self, mv: memoryview, i: int, sid: int, length: int) -> None:
        """A large DATA frame starts at ``mv[i]`` and runs past its end: assemble it in place."""
        off = _U64.unpack_from(mv, i + HEADER_SIZE)[0]
        if off > MAX_OFFSET:
            raise LinkProtocolError("DATA offset out of range")
        k = len(mv) - (i + HEADER_SIZE + 8)
        self._plen = length - 8
        self._pending = (sid, off, bytearray())
        self._filled = 0
        if k:  # (none arrived yet: the payload may be passed, see pass_target)
            self._payload()[:k] = mv[i + HEADER_SIZE + 8 :]
            self._filled = k
