"""Port identity: a VM's key plus a port label.

A VM's key is its VC UUID in canonical form (lower-case hex, spaces and dashes
removed: ESX sends ``"50 1d 2a ...-..."``) when it is a real UUID, and otherwise
its name kept exactly (``common.proto.identity`` holds the grammar both the relay
and the appliance check names against). The display form is kept as sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from common.proto.identity import IdentityError, check_label, is_label, uuid_key, vm_key

__all__ = [
    "DEFAULT_LABEL",
    "IdentityError",
    "PortKey",
    "canonical_uuid",
    "check_label",
    "is_label",
    "label_from_uri",
    "uuid_prefix",
    "vm_key",
]

DEFAULT_LABEL = "serial0"


def canonical_uuid(raw: str) -> str:
    """32 lower-case hex digits; raises IdentityError (a ValueError) unless *raw*
    is a VC UUID (32 hex digits once spaces and dashes are removed)."""
    key = uuid_key(raw)
    if key is None:
        raise IdentityError(f"not a VC UUID: {raw[:40]!r}")
    return key


def uuid_prefix(target: str) -> str | None:
    """An operator's (partial) UUID in canonical form, for prefix matching: hex
    digits with spaces and dashes removed, lower-cased; None if not hex."""
    s = target.replace(" ", "").replace("-", "").lower()
    if not s or any(c not in "0123456789abcdef" for c in s):
        return None
    return s


def label_from_uri(uri: str) -> str | None:
    """The ``port=`` label in a service URI's query, if any (not yet validated)."""
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
    """What a console is keyed by: a VM key (canonical VC UUID, or a VM name kept
    exactly) + port label. Both are checked on construction, so a key is always
    safe to derive a file name from."""

    uuid: str
    label: str = DEFAULT_LABEL

    def __post_init__(self) -> None:
        if vm_key(self.uuid) != self.uuid:
            raise IdentityError(f"not a canonical VM key: {self.uuid[:40]!r}")
        check_label(self.label)

    @property
    def is_uuid(self) -> bool:
        """The VM is keyed by its VC UUID (else by its name)."""
        return uuid_key(self.uuid) == self.uuid

    @classmethod
    def from_raw(cls, raw_vm: str, label: str | None = None) -> PortKey:
        """Raises IdentityError for a VM or label outside the grammar."""
        return cls(vm_key(raw_vm), label or DEFAULT_LABEL)

    def __str__(self) -> str:
        return f"{self.uuid}:{self.label}"
