"""Port identity: a VM's VC UUID in canonical form plus a port label.

ESX sends the VC UUID as ASCII with spaces and a dash (``"50 1d 2a ...-..."``);
the canonical form is lower-case hex with spaces and dashes removed. The display
form is kept exactly as ESX sent it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

DEFAULT_LABEL = "serial0"


def canonical_uuid(raw: str) -> str:
    """Lower-case hex with spaces and dashes removed; raises ValueError if not hex."""
    s = "".join(raw.split()).replace("-", "").lower()
    if not s or any(c not in "0123456789abcdef" for c in s):
        raise ValueError(f"not a VC UUID: {raw!r}")
    return s


def label_from_uri(uri: str) -> str | None:
    """The ``port=`` label in a service URI's query, if any."""
    try:
        query = urlsplit(uri).query
    except ValueError:
        return None
    values = parse_qs(query).get("port")
    if values and values[0]:
        return values[0]
    return None


@dataclass(frozen=True, order=True)
class PortKey:
    """What a console is keyed by: canonical VC UUID + port label."""

    uuid: str
    label: str = DEFAULT_LABEL

    @classmethod
    def from_raw(cls, raw_uuid: str, label: str | None = None) -> PortKey:
        return cls(canonical_uuid(raw_uuid), label or DEFAULT_LABEL)

    def __str__(self) -> str:
        return f"{self.uuid}:{self.label}"
