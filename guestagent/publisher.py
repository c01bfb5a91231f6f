"""What the guest publishes through guestinfo: started, exit status, addresses, errors.

Writes are serialised. A write refused for size (``GuestinfoLimitError``) or a
failing channel is logged and reported as an error entry where possible; the
publisher never raises into the agent, which keeps running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import trio

from common.io.guestinfo.base import BackendError, GuestBackend
from common.ops.wiretext import wire
from common.proto import guestinfo as gi

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Publisher:
    def __init__(self, backend: GuestBackend, clock: Clock) -> None:
        self.backend = backend
        self.clock = clock
        self._lock = trio.Lock()
        self._errors: dict[str, str] = {}
        self._networks: dict[str, list[gi.IPAddress]] = {}
        self.failures = 0
        self.last_failure = ""
        self._failed = trio.Event()

    def now(self) -> int:
        return int(self.clock())

    async def _write(self, updates: Mapping[str, str], what: str) -> bool:
        async with self._lock:
            try:
                await self.backend.set_many(updates)
                return True
            except gi.GuestinfoLimitError as e:
                self._fail(what, str(e))
            except (BackendError, gi.GuestinfoError, OSError) as e:
                self._fail(what, f"{type(e).__name__}: {e}")
        if what != "error":
            await self._write_error("publisher", f"publishing {what} failed: {self.last_failure}")
        return False

    def _fail(self, what: str, text: str) -> None:
        self.failures += 1
        self.last_failure = text
        self._failed.set()
        self._failed = trio.Event()
        log.error("guestinfo: publishing %s failed: %s", what, wire(text))

    async def wait_failures(self, n: int = 1) -> None:
        """Wait until at least ``n`` publications have failed (for tests and the lab)."""
        while self.failures < n:
            await self._failed.wait()

    async def started(self, session_id: str, starttime: int | None = None) -> bool:
        return await self._write(
            gi.encode_started(session_id, True, starttime=starttime or self.now()), "started"
        )

    async def start_failed(self, session_id: str, error: str) -> bool:
        return await self._write(
            gi.encode_started(session_id, False, gi.clip_error(error)), "started"
        )

    async def exited(self, session_id: str, code: int, signal_name: str = "") -> bool:
        return await self._write(
            gi.encode_exit(session_id, code, self.now(), signal_name), "exit status"
        )

    async def signal_ack(self, session_id: str, seq: int) -> bool:
        return await self._write({gi.signal_ack_key(session_id): str(seq)}, "signal ack")

    async def networks(self, current: Mapping[str, list[gi.IPAddress]]) -> bool:
        cur = {k: list(v) for k, v in current.items()}
        if cur == self._networks:
            return True
        ok = await self._write(gi.encode_networks(cur, self._networks), "addresses")
        if ok:
            self._networks = cur
        return ok

    async def error(self, component: str, text: str) -> bool:
        return await self._write_error(component, text)

    async def clear_error(self, component: str) -> bool:
        if component not in self._errors:
            return True
        del self._errors[component]
        return await self._write(
            {
                gi.error_key(component): gi.NIL,
                gi.errors_index_key(): gi.encode_map_keys(self._errors),
            },
            "error",
        )

    async def _write_error(self, component: str, text: str) -> bool:
        text = gi.clip_error(text)
        self._errors[component] = text
        return await self._write(
            {
                gi.error_key(component): text,
                gi.errors_index_key(): gi.encode_map_keys(self._errors),
            },
            "error",
        )
