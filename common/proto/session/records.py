"""Frames after the sync marker, and the sealed records of an established connection.

Every frame is ``type u8 | length u32 (big-endian) | body[length]``; the length is
checked against the range for its type as soon as the header is in (no body is
waited for), so the reader holds at most one ``MAX_FRAME`` beyond the chunk just fed.

A RECORD's body is ``seq u64 (big-endian) | ChaCha20-Poly1305(payload)``, sealed under
its direction's key with the nonce ``00000000 | seq (little-endian u64)`` and the 13
bytes ``type | length | seq`` as associated data. ``seq`` counts from 0 in each
direction: a record that does not open under the key is TAMPERED; one that opens
but carries an old number is REPLAYED, a number ahead of the next one REORDERED
(in between, a record went missing). The number is on the wire only to name the
fault; the AEAD decides. A record from another connection never opens (other keys).
"""

from __future__ import annotations

import enum
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from common.proto.session.errors import Refusal, SecureError
from common.proto.session.handshake import DH_LEN, MAX_HELLO, TAG_LEN, nonce

__all__ = [
    "HEADER",
    "MAX_FRAME",
    "MAX_RECORD",
    "FrameReader",
    "FrameType",
    "RecordOpener",
    "RecordSealer",
    "encode_frame",
]

HEADER = struct.Struct("!BI")
_SEQ = struct.Struct("!Q")
MAX_RECORD = 64 * 1024  # plaintext bytes per record
MAX_SEQ = (1 << 64) - 1


class FrameType(enum.IntEnum):
    INIT = 0x01
    RESP = 0x02
    FINISH = 0x03
    ALERT = 0x15
    RECORD = 0x17


# (min, max) body length per frame type
_BODY_LIMITS: dict[int, tuple[int, int]] = {
    FrameType.INIT: (DH_LEN + TAG_LEN, DH_LEN + MAX_HELLO + TAG_LEN),
    FrameType.RESP: (DH_LEN + TAG_LEN, DH_LEN + MAX_HELLO + TAG_LEN),
    FrameType.FINISH: (TAG_LEN, TAG_LEN),
    FrameType.ALERT: (1, 1),
    FrameType.RECORD: (_SEQ.size + TAG_LEN, _SEQ.size + MAX_RECORD + TAG_LEN),
}
MAX_FRAME = HEADER.size + max(high for _, high in _BODY_LIMITS.values())


def encode_frame(ftype: FrameType, body: bytes) -> bytes:
    return HEADER.pack(ftype, len(body)) + body


class FrameReader:
    """Bytes in, whole frames out, one at a time; ``Refusal`` for a bad type or length.

    A body comes back as a view into the reader's buffer, valid until the next ``feed``
    (records are opened straight from it: no copy of a 64 KiB body).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos:
            # a new buffer, not an in-place delete: a body handed out may still be viewed
            self._buf = self._buf[self._pos :]
            self._pos = 0
        self._buf += data

    @property
    def partial(self) -> int:
        """Bytes held of a frame not yet whole."""
        return len(self._buf) - self._pos

    def next_frame(self) -> tuple[FrameType, memoryview] | None:
        if len(self._buf) - self._pos < HEADER.size:
            return None
        ftype, length = HEADER.unpack_from(self._buf, self._pos)
        limits = _BODY_LIMITS.get(ftype)
        if limits is None:
            raise Refusal(SecureError.MALFORMED, f"unknown frame type 0x{ftype:02x}")
        low, high = limits
        if length > high:
            raise Refusal(SecureError.OVERSIZE, f"{FrameType(ftype).name} of {length} bytes")
        if length < low:
            raise Refusal(SecureError.MALFORMED, f"{FrameType(ftype).name} of {length} bytes")
        start = self._pos + HEADER.size
        if len(self._buf) < start + length:
            return None
        self._pos = start + length
        return FrameType(ftype), memoryview(self._buf)[start : start + length]


class RecordSealer:
    """One direction's sending half: payload in, RECORD frame out."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.seq = 0

    def seal(self, payload: bytes) -> tuple[bytes, bytes]:
        """The frame's first 13 bytes (header and ``seq``) and the sealed payload after them."""
        if len(payload) > MAX_RECORD:
            raise ValueError(f"record of {len(payload)} bytes (limit {MAX_RECORD})")
        if self.seq > MAX_SEQ:
            raise ValueError("sequence numbers exhausted: open a new connection")
        seq = _SEQ.pack(self.seq)
        ad = HEADER.pack(FrameType.RECORD, len(seq) + len(payload) + TAG_LEN) + seq
        sealed = self._aead.encrypt(nonce(self.seq), payload, ad)
        self.seq += 1
        return ad, sealed


class RecordOpener:
    """One direction's receiving half: RECORD body in, payload out (or ``Refusal``)."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.seq = 0  # the next number expected

    def open(self, body: bytes | memoryview) -> bytes:
        (seq,) = _SEQ.unpack_from(body, 0)
        ad = HEADER.pack(FrameType.RECORD, len(body)) + bytes(body[: _SEQ.size])
        try:
            payload = self._aead.decrypt(nonce(seq), body[_SEQ.size :], ad)
        except InvalidTag:
            raise Refusal(SecureError.TAMPERED, f"record #{self.seq} did not open") from None
        if seq < self.seq:
            raise Refusal(SecureError.REPLAYED, f"record #{seq} again (expected #{self.seq})")
        if seq > self.seq:
            raise Refusal(SecureError.REORDERED, f"record #{seq} before #{self.seq}")
        self.seq += 1
        return payload
