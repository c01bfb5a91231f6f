"""Guestinfo size limits: per value and per VM, checked before a write."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from common.proto.guestinfo.errors import GuestinfoLimitError

MAX_VALUE_BYTES = 64 * 1024
MAX_TOTAL_BYTES = 1024 * 1024


def entry_size(key: str, value: str) -> int:
    return len(key.encode()) + len(value.encode())


def check_value(key: str, value: str, max_value: int = MAX_VALUE_BYTES) -> None:
    n = len(value.encode())
    if n > max_value:
        raise GuestinfoLimitError(
            f"guestinfo value for {key} is {n} bytes; the limit is {max_value} bytes per value"
        )


@dataclass
class SizeLedger:
    """Tracks the size of a VM's guestinfo and refuses writes that would exceed the limits.

    Seed it with what is known (values read or written); ``check`` before every
    write, ``record`` after it succeeded.
    """

    max_value: int = MAX_VALUE_BYTES
    max_total: int = MAX_TOTAL_BYTES
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    def seed(self, values: Mapping[str, str | None]) -> None:
        for k, v in values.items():
            if v is None or v == "":
                self.sizes.pop(k, None)
            else:
                self.sizes[k] = entry_size(k, v)

    def check(self, updates: Mapping[str, str]) -> None:
        total = self.total
        for k, v in updates.items():
            check_value(k, v, self.max_value)
            total += entry_size(k, v) - self.sizes.get(k, 0)
        if total > self.max_total:
            raise GuestinfoLimitError(
                f"guestinfo would grow to {total} bytes writing {', '.join(sorted(updates))}; "
                f"the limit is {self.max_total} bytes per VM"
            )

    def record(self, updates: Mapping[str, str]) -> None:
        self.seed(dict(updates))
