"""Looking through stream wrappers: the one copy of the ``transport_stream`` walk.

A wrapper stream (``trio.SSLStream``, the vSPC's ``PrefixedStream``) names the
stream it wraps ``transport_stream``, trio's convention. :func:`layers` walks
that chain outermost first; :func:`find_layer` returns the first layer of a
type, e.g. the ``trio.SocketStream`` underneath (for its socket) or a
``trio.SSLStream`` (is this connection TLS?).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

L = TypeVar("L")


def layers(stream: object) -> Iterator[object]:
    """``stream``, then each stream it wraps, outermost first."""
    s: object | None = stream
    while s is not None:
        yield s
        s = getattr(s, "transport_stream", None)


def find_layer(stream: object, kind: type[L]) -> L | None:
    """The outermost layer of ``stream`` (itself included) that is a ``kind``, or None."""
    for s in layers(stream):
        if isinstance(s, kind):
            return s
    return None
