"""The installed version of vic-channel (package metadata), for ``vic --version`` and metrics."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    """The distribution's version, or ``0+unknown`` when run from a tree that is not installed."""
    try:
        return metadata.version("vic-channel")
    except metadata.PackageNotFoundError:
        return "0+unknown"
