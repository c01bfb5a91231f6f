"""A file-backed stand-in for one VM's ``config.extraConfig`` (plus its power state).

The file is JSON ``{"version": n, "power": "poweredOn", "extraConfig": {...}}``,
replaced atomically (write + rename) under an ``flock`` on ``<path>.lock``, so the
guest agent and the appliance may be different processes. Like vSphere, setting
a key to ``""`` (or ``None``) removes it, and the store refuses a value over the
per-value limit or a VM over the total limit. Changes are announced through
inotify on the directory (polling as a fallback).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from common.io.inotify import Inotify
from common.proto import guestinfo as gi

POWERED_ON = "poweredOn"
POWERED_OFF = "poweredOff"
SUSPENDED = "suspended"
POWER_STATES = (POWERED_ON, POWERED_OFF, SUSPENDED)


@dataclass(frozen=True)
class StoreState:
    version: int = 0
    power: str = POWERED_ON
    values: Mapping[str, str] = field(default_factory=dict)


def store_size(values: Mapping[str, str]) -> int:
    return sum(gi.entry_size(k, v) for k, v in values.items() if k.startswith("guestinfo."))


class FileStore:
    """One VM's extraConfig in a JSON file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_value: int = gi.MAX_VALUE_BYTES,
        max_total: int = gi.MAX_TOTAL_BYTES,
    ) -> None:
        self.path = Path(path)
        self.max_value = max_value
        self.max_total = max_total

    # -- sync primitives (short; safe to call from trio code) --------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self) -> StoreState:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return StoreState()
        values = data.get("extraConfig", {})
        return StoreState(
            version=int(data.get("version", 0)),
            power=str(data.get("power", POWERED_ON)),
            values={str(k): str(v) for k, v in values.items()},
        )

    def _write(self, st: StoreState) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(
                {"version": st.version, "power": st.power, "extraConfig": dict(st.values)},
                f,
                separators=(",", ":"),
            )
        os.replace(tmp, self.path)

    def update(self, updates: Mapping[str, str | None], *, power: str | None = None) -> StoreState:
        """Apply updates atomically; ``""``/``None`` deletes. Raises GuestinfoLimitError."""
        if power is not None and power not in POWER_STATES:
            raise ValueError(f"unknown power state {power!r}")
        with self._locked():
            cur = self.read()
            values = dict(cur.values)
            for k, v in updates.items():
                if v is None or v == "":
                    values.pop(k, None)
                    continue
                gi.check_value(k, v, self.max_value)
                values[k] = v
            total = store_size(values)
            if total > self.max_total and total > store_size(cur.values):
                raise gi.GuestinfoLimitError(
                    f"guestinfo of {self.path.name} would be {total} bytes; "
                    f"the limit is {self.max_total} bytes per VM"
                )
            new = StoreState(
                version=cur.version + 1,
                power=power if power is not None else cur.power,
                values=values,
            )
            self._write(new)
            return new

    def set_power(self, power: str) -> StoreState:
        return self.update({}, power=power)

    # -- async change notification -----------------------------------------------------

    async def wait_newer(self, version: int, *, poll_interval: float = 0.5) -> StoreState:
        """Return the state once its version is greater than ``version``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ino: Inotify | None = None
        try:
            ino = Inotify()
            ino.add_watch(str(self.path.parent))
        except OSError:
            if ino is not None:
                ino.close()
            ino = None
        try:
            while True:
                st = self.read()
                if st.version > version:
                    return st
                if ino is None:
                    await trio.sleep(poll_interval)
                else:
                    with trio.move_on_after(poll_interval):
                        await ino.wait()
        finally:
            if ino is not None:
                with contextlib.suppress(RuntimeError):
                    trio.lowlevel.notify_closing(ino.fd)
                ino.close()
