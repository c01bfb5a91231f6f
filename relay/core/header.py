"""Origin header: the first bytes of every stream the relay forwards.

The relay writes this header before any byte of the forwarded stream, so the
appliance learns who is speaking (origin host, VM identity, ingress kind, port
label) from the relay and never from the guest. Sans-IO: bytes in, header out.

Wire format, version 1 (all integers big-endian)::

    magic    4 bytes  b"VICH"
    version  u8       1
    length   u16      number of body bytes that follow (<= MAX_BODY_SIZE)
    body     five fields, each: u8 length, then that many bytes of UTF-8:
             host, vm, kind, label, stream_id

The body length must equal the sum of its fields exactly: a header that lies
about its length is an error, as is an unknown version, an over-long field,
invalid UTF-8, a control character, an empty host/vm, or an unknown kind.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from relay.core.identity import IdentityError, check_origin

INGRESS_KINDS = ("vsock", "hvsock", "pipe", "serial", "tcp", "vspc")

MAGIC = b"VICH"
VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
FIELD_NAMES = ("host", "vm", "kind", "label", "stream_id")
MAX_FIELD_SIZE = 255
MAX_BODY_SIZE = len(FIELD_NAMES) * (1 + MAX_FIELD_SIZE)
_PREFIX = struct.Struct(">4sBH")
PREFIX_SIZE = _PREFIX.size
MAX_HEADER_SIZE = PREFIX_SIZE + MAX_BODY_SIZE
_REQUIRED = frozenset({"host", "vm", "kind"})


class HeaderError(ValueError):
    """A malformed, forged or unsupported origin header."""


@dataclass(frozen=True)
class OriginHeader:
    host: str
    vm: str
    kind: str
    label: str
    stream_id: str = ""
    version: int = 1


def _check_field(name: str, value: str) -> bytes:
    if not isinstance(value, str):
        raise HeaderError(f"origin header field {name!r} must be a string")
    if name in _REQUIRED and not value:
        raise HeaderError(f"origin header field {name!r} is empty")
    for ch in value:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise HeaderError(
                f"origin header field {name!r} contains control character {ch!r}"
            )
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise HeaderError(f"origin header field {name!r} is not encodable as UTF-8") from exc
    if len(raw) > MAX_FIELD_SIZE:
        raise HeaderError(
            f"origin header field {name!r} is {len(raw)} bytes, over {MAX_FIELD_SIZE}"
        )
    if name == "kind" and value not in INGRESS_KINDS:
        raise HeaderError(f"origin header kind {value!r} is not one of {INGRESS_KINDS}")
    return raw


def encode_header(h: OriginHeader) -> bytes:
    """Encode *h*; raises HeaderError if the decoder would reject the result."""
    if h.version not in SUPPORTED_VERSIONS:
        raise HeaderError(f"origin header version {h.version} is not supported")
    body = bytearray()
    for name in FIELD_NAMES:
        raw = _check_field(name, getattr(h, name))
        body.append(len(raw))
        body += raw
    return _PREFIX.pack(MAGIC, h.version, len(body)) + bytes(body)


def _decode_body(version: int, body: bytes) -> OriginHeader:
    values: list[str] = []
    pos = 0
    for name in FIELD_NAMES:
        if pos >= len(body):
            raise HeaderError(
                f"origin header length {len(body)} is too short: field {name!r} missing"
            )
        size = body[pos]
        pos += 1
        if pos + size > len(body):
            raise HeaderError(
                f"origin header field {name!r} claims {size} bytes, only {len(body) - pos} left"
            )
        raw = body[pos : pos + size]
        pos += size
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HeaderError(f"origin header field {name!r} is not valid UTF-8") from exc
        _check_field(name, value)
        values.append(value)
    if pos != len(body):
        raise HeaderError(
            f"origin header length {len(body)} is too long: {len(body) - pos} bytes after the fields"
        )
    host, vm, kind, label, stream_id = values
    return OriginHeader(host, vm, kind, label, stream_id, version)


class HeaderDecoder:
    """Incremental decoder for one origin header at the start of a stream.

    ``feed(data)`` returns ``(None, b"")`` while the header is incomplete,
    ``(header, rest)`` once it is complete (``rest`` being the bytes after it,
    untouched), and ``(None, data)`` for anything fed after that. It never holds
    more than MAX_HEADER_SIZE bytes. After a HeaderError every feed raises again.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._done = False
        self._error: HeaderError | None = None

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> tuple[OriginHeader | None, bytes]:
        if self._error is not None:
            raise self._error
        if self._done:
            return None, bytes(data)
        try:
            return self._feed(data)
        except HeaderError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def _feed(self, data: bytes) -> tuple[OriginHeader | None, bytes]:
        view = memoryview(data)
        # Magic, checked byte by byte so garbage fails on its first byte.
        while len(self._buf) < len(MAGIC) and view:
            expected = MAGIC[len(self._buf)]
            if view[0] != expected:
                raise HeaderError(
                    f"bad origin header magic: got {bytes(self._buf) + bytes(view[:1])!r},"
                    f" expected {MAGIC!r}"
                )
            self._buf.append(view[0])
            view = view[1:]
        if len(self._buf) < PREFIX_SIZE:
            take = min(PREFIX_SIZE - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) > len(MAGIC):
                version = self._buf[len(MAGIC)]
                if version not in SUPPORTED_VERSIONS:
                    raise HeaderError(f"unsupported origin header version {version}")
            if len(self._buf) < PREFIX_SIZE:
                return None, b""
        _magic, version, length = _PREFIX.unpack_from(self._buf)
        if length > MAX_BODY_SIZE:
            raise HeaderError(f"origin header length {length} is over {MAX_BODY_SIZE}")
        need = PREFIX_SIZE + length - len(self._buf)
        take = min(need, len(view))
        self._buf += view[:take]
        view = view[take:]
        if take < need:
            return None, b""
        header = _decode_body(version, bytes(self._buf[PREFIX_SIZE:]))
        self._buf.clear()
        self._done = True
        return header, bytes(view)


def check_identity(h: OriginHeader) -> OriginHeader:
    """*h* itself if the names it carries are inside the identity grammar
    (``relay.core.identity``); HeaderError otherwise. The codec checks only the
    format; whoever lets a header name anything checks this too."""
    try:
        check_origin(h.host, h.vm, h.label, h.stream_id)
    except IdentityError as e:
        raise HeaderError(f"origin header: {e}") from None
    return h
