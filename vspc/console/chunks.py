"""Lists of byte chunks on their way to a socket or a file."""

from __future__ import annotations

from collections.abc import Iterator


def coalesce(chunks: list[bytes], small: int = 64 * 1024) -> Iterator[bytes]:
    """``chunks`` in order: big ones as they are (no copy), runs of small ones joined."""
    run: list[bytes] = []
    for c in chunks:
        if len(c) < small:
            run.append(c)
            continue
        if run:
            yield run[0] if len(run) == 1 else b"".join(run)
            run = []
        yield c
    if run:
        yield run[0] if len(run) == 1 else b"".join(run)
