"""Finding the sync marker in a byte stream that may start with junk (boot noise).

Each end sends ``MAGIC`` once, as the first bytes it writes; the other end discards
whatever comes before it, up to ``max_junk`` bytes, and refuses the connection
(``NO_SYNC``) past that. Only the last ``len(MAGIC) - 1`` bytes of junk are kept
(a marker split across two reads), so junk costs no memory.
"""

from __future__ import annotations

from common.proto.session.errors import Refusal, SecureError

__all__ = ["DEFAULT_MAX_JUNK", "MAGIC", "SyncScanner"]

# 8 bytes, two of them outside ASCII: unlikely in boot noise, a console or a shell.
MAGIC = b"\xf1VICsec\x8e"
DEFAULT_MAX_JUNK = 64 * 1024


class SyncScanner:
    """Feed bytes until ``feed`` returns what follows the marker (then the scanner is done)."""

    def __init__(self, max_junk: int = DEFAULT_MAX_JUNK) -> None:
        if max_junk < 0:
            raise ValueError("max_junk must be >= 0")
        self.max_junk = max_junk
        self.junk = 0  # bytes discarded so far
        self._tail = b""

    def feed(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """The bytes after the marker once it is found, else None; ``Refusal`` past the bound."""
        buf = self._tail + data
        at = buf.find(MAGIC)
        if at >= 0:
            self._count(at)
            self._tail = b""
            return buf[at + len(MAGIC) :]
        keep = min(len(buf), len(MAGIC) - 1)
        self._count(len(buf) - keep)
        self._tail = buf[len(buf) - keep :]
        return None

    def _count(self, discarded: int) -> None:
        self.junk += discarded
        if self.junk > self.max_junk:
            raise Refusal(
                SecureError.NO_SYNC, f"no sync marker in {self.junk} bytes (limit {self.max_junk})"
            )
