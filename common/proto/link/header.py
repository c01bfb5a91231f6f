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

Version 2 appends two u64 to the body, for a stream that *continues* an earlier
one with the same ``stream_id`` (a relay on the path restarted and the sender
carried its unacknowledged bytes on)::

    offset    u64  the stream's offset (VM to appliance) of the first byte after
                   this header: bytes before it came on an earlier connection
    received  u64  bytes (appliance to VM) the VM's end has received so far

A receiver that already has bytes of the stream past ``offset`` skips them;
one that sent the VM more than ``received`` sends the rest again (or records
the gap). Version 1 (no such fields: a stream from its first byte) is still
accepted and is what a stream that does not continue anything is sent as.

The body length must equal the sum of its fields exactly: a header that lies
about its length is an error, as is an unknown version, an over-long field,
invalid UTF-8, a control character, an empty host/vm, or an unknown kind.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from common.proto.identity import IdentityError, check_origin

INGRESS_KINDS = ("vsock", "hvsock", "pipe", "serial", "tcp", "vspc")

MAGIC = b"VICH"
VERSION = 1
CONTINUATION_VERSION = 2
SUPPORTED_VERSIONS = frozenset({1, 2})
FIELD_NAMES = ("host", "vm", "kind", "label", "stream_id")
MAX_FIELD_SIZE = 255
_OFFSETS = struct.Struct(">QQ")
MAX_OFFSET = (1 << 63) - 1
MAX_BODY_SIZE = len(FIELD_NAMES) * (1 + MAX_FIELD_SIZE) + _OFFSETS.size
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
    offset: int = 0  # version 2: where in the stream this connection starts (VM to appliance)
    received: int = 0  # version 2: what the VM's end has received (appliance to VM)

    @property
    def continues(self) -> bool:
        """This connection carries on an earlier one of the same stream."""
        return self.version >= CONTINUATION_VERSION


def continued(h: OriginHeader, offset: int, received: int) -> OriginHeader:
    """The header for a connection that carries ``h``'s stream on from ``offset``."""
    return replace(h, version=CONTINUATION_VERSION, offset=offset, received=received)


def _check_field(name: str, value: str) -> bytes:
    if not isinstance(value, str):
        raise HeaderError(f"origin header field {name!r} must be a string")
    if name in _REQUIRED and not value:
        raise HeaderError(f"origin header field {name!r} is empty")
    for ch in value:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise HeaderError(f"origin header field {name!r} contains control character {ch!r}")
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
    if h.version >= CONTINUATION_VERSION:
        if not (0 <= h.offset <= MAX_OFFSET and 0 <= h.received <= MAX_OFFSET):
            raise HeaderError("origin header offsets out of range")
        body += _OFFSETS.pack(h.offset, h.received)
    elif h.offset or h.received:
        raise HeaderError(f"origin header version {h.version} carries no offsets")
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
    offset = received = 0
    if version >= CONTINUATION_VERSION:
        if len(body) - pos < _OFFSETS.size:
            raise HeaderError(f"origin header length {len(body)} is too short: offsets missing")
        offset, received = _OFFSETS.unpack_from(body, pos)
        pos += _OFFSETS.size
        if offset > MAX_OFFSET or received > MAX_OFFSET:
            raise HeaderError("origin header offsets out of range")
    if pos != len(body):
        raise HeaderError(
            f"origin header length {len(body)} is too long: "
            f"{len(body) - pos} bytes after the fields"
        )
    host, vm, kind, label, stream_id = values
    return OriginHeader(host, vm, kind, label, stream_id, version, offset, received)


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
    (``common.proto.identity``); HeaderError otherwise. The codec checks only the
    format; whoever lets a header name anything checks this too."""
    try:
        check_origin(h.host, h.vm, h.label, h.stream_id)
    except IdentityError as e:
        raise HeaderError(f"origin header: {e}") from None
    return h
