"""Un-doubling Telnet data in one step: the parser's fast path for binary data.

``undouble(data)`` is ``data`` with every ``IAC IAC`` (0xFF 0xFF) made one 0xFF,
when every 0xFF in it is one half of such a pair (read left to right, as the
parser reads them); ``None`` when any is not (a command, or an IAC that ends the
chunk), which the parser's general path then handles.

Two implementations, equal on every input (tests/common/proto/test_telnet_undouble.py):
``undouble_py`` (one ``split`` and one ``join``, no Python loop over the bytes,
but one bytes object per run between 0xFFs: about 0.5 ms per MiB of random
binary data) and, when it was built, the C extension ``_undouble`` (``memchr``
and ``memcpy``: about 0.1 ms per MiB). ``undouble`` is the C one when present.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

_IAC_B: Final = b"\xff"


def undouble_py(data: bytes) -> bytes | None:
    """The pure-Python reference (see the module docstring)."""
    if _IAC_B not in data:
        return data
    # Split at every 0xFF: every IAC is doubled iff each odd-numbered piece
    # is empty and there is an even number of them.
    parts = data.split(_IAC_B)
    if len(parts) & 1 and not any(parts[1::2]):
        return _IAC_B.join(parts[::2])
    return None


def _load_c() -> Callable[[bytes], bytes | None] | None:
    try:
        from common.proto.telnet._undouble import undouble as fast
    except ImportError:  # not built (no compiler where it was installed): pure Python
        return None
    return fast


undouble_c: Final = _load_c()
undouble: Final[Callable[[bytes], bytes | None]] = undouble_c or undouble_py
