"""The preamble of a forwarded peer link (sans-IO).

A relay that accepts a peer link with ``forward = ...`` ends TLS itself, then
passes the link on to the appliance's link endpoint over a trusted transport
(vsock or a Unix socket inside one host). Before the first byte of the link it
writes one line naming the identity the peer proved in its certificate::

    VICLINK 1 vic://host/esx-01\\n

The appliance believes that line only on a listener configured for forwarded
links, because only a relay can reach it.
"""

from __future__ import annotations

MAGIC = b"VICLINK 1 "
MAX_LINE = 512


class PreambleError(ValueError):
    pass


def encode_preamble(identity: str) -> bytes:
    raw = identity.encode("utf-8")
    if not raw or b"\n" in raw or b" " in raw or len(MAGIC) + len(raw) + 1 > MAX_LINE:
        raise PreambleError(f"unusable identity for a forwarded link: {identity!r}")
    return MAGIC + raw + b"\n"


class PreambleDecoder:
    """Feed bytes until ``feed`` returns the identity; bytes after the newline are
    returned with it (the start of the link)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> tuple[str | None, bytes]:
        self._buf += data
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) >= MAX_LINE:
                raise PreambleError(f"forwarded-link preamble longer than {MAX_LINE} bytes")
            if not MAGIC.startswith(bytes(self._buf[: len(MAGIC)])):
                raise PreambleError("not a forwarded link (no VICLINK preamble)")
            return None, b""
        line, rest = bytes(self._buf[:nl]), bytes(self._buf[nl + 1 :])
        if not line.startswith(MAGIC):
            raise PreambleError("not a forwarded link (no VICLINK preamble)")
        ident = line[len(MAGIC) :]
        try:
            text = ident.decode("utf-8")
        except UnicodeDecodeError:
            raise PreambleError("forwarded-link identity is not UTF-8") from None
        if not text.startswith("vic://") or " " in text:
            raise PreambleError(f"forwarded-link identity is not a vic:// URI: {text!r}")
        return text, rest
