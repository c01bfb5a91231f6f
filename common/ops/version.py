"""The one version string: ``vic --version``, ``vic_channel_build_info`` and the logs.

From the installed distribution's metadata; a source checkout that was never
installed reads ``pyproject.toml`` beside the packages; failing both, ``0+unknown``.
"""

from __future__ import annotations

import functools
import re
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "vic-channel"
UNKNOWN = "0+unknown"


@functools.cache
def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return _from_pyproject(Path(__file__).resolve().parents[2] / "pyproject.toml")


def _from_pyproject(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError:
        return UNKNOWN
    m = re.search(r'^\[project\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
    return m.group(1) if m else UNKNOWN
