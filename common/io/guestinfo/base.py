"""The guest's view of guestinfo: get keys, set guest-writable keys, notice config changes."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping

import trio

from common.proto import guestinfo as gi


class BackendError(Exception):
    """The guestinfo channel itself failed (tool missing, API down, ...)."""


class GuestBackend(abc.ABC):
    """Base for guest-side backends.

    ``set_many`` refuses keys the guest may not write and checks the size limits
    (``SizeLedger``) before anything is written.
    """

    poll_interval: float = 0.25

    def __init__(self, ledger: gi.SizeLedger | None = None) -> None:
        self.ledger = ledger or gi.SizeLedger()

    @abc.abstractmethod
    async def get(self, key: str) -> str | None:
        """Raw value, or None if the key is absent."""

    async def get_many(self, keys: Iterable[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for k in keys:
            out[k] = await self.get(k)
        self.ledger.seed(out)
        return out

    @abc.abstractmethod
    async def _set_many(self, updates: Mapping[str, str]) -> None:
        """Write already-validated keys, in order."""

    async def set_many(self, updates: Mapping[str, str]) -> None:
        for k in updates:
            gi.require_guest_writable(k)
        self.ledger.check(updates)
        await self._set_many(updates)
        self.ledger.record(updates)

    async def set(self, key: str, value: str) -> None:
        await self.set_many({key: value})

    async def wait_changed(
        self, keys: Iterable[str], last: Mapping[str, str | None]
    ) -> dict[str, str | None]:
        """Return the values of ``keys`` once any differs from ``last`` (polls by default)."""
        keys = list(keys)
        while True:
            cur = await self.get_many(keys)
            if any(cur.get(k) != last.get(k) for k in keys):
                return cur
            await trio.sleep(self.poll_interval)

    async def aclose(self) -> None:
        return None
