"""Guest backend over the file-backed store (the lab's and tests' simulated hypervisor)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from common.io.guestinfo.base import GuestBackend
from common.io.guestinfo.filestore import FileStore
from common.proto import guestinfo as gi


class FileGuestBackend(GuestBackend):
    def __init__(self, store: FileStore, ledger: gi.SizeLedger | None = None) -> None:
        super().__init__(ledger or gi.SizeLedger(store.max_value, store.max_total))
        self.store = store
        self._version = -1

    def _sync_ledger(self) -> dict[str, str]:
        st = self.store.read()
        self._version = st.version
        # the store knows the exact total: mirror it so checks see other writers too
        self.ledger.sizes = {k: gi.entry_size(k, v) for k, v in st.values.items()}
        return dict(st.values)

    async def get(self, key: str) -> str | None:
        return self.store.read().values.get(key)

    async def get_many(self, keys: Iterable[str]) -> dict[str, str | None]:
        values = self._sync_ledger()
        return {k: values.get(k) for k in keys}

    async def set_many(self, updates: Mapping[str, str]) -> None:
        self._sync_ledger()
        await super().set_many(updates)

    async def _set_many(self, updates: Mapping[str, str]) -> None:
        self.store.update(dict(updates))

    async def wait_changed(
        self, keys: Iterable[str], last: Mapping[str, str | None]
    ) -> dict[str, str | None]:
        keys = list(keys)
        st = self.store.read()
        while True:
            cur = {k: st.values.get(k) for k in keys}
            if any(cur.get(k) != last.get(k) for k in keys):
                return cur
            st = await self.store.wait_newer(st.version)
