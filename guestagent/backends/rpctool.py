"""Guest backend through open-vm-tools' ``vmware-rpctool`` (the real path inside a vSphere VM).

``vmware-rpctool "info-get guestinfo.KEY"`` prints the value (exit 1 when unset);
``vmware-rpctool "info-set guestinfo.KEY VALUE"`` sets it. The process runner is
injectable so the agent, which reaps every child as PID 1, can run the tool
through its own reaper.
"""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio

from common.io.guestinfo.base import BackendError, GuestBackend
from common.proto import guestinfo as gi

# (argv) -> (returncode, stdout, stderr)
Runner = Callable[[Sequence[str]], Awaitable[tuple[int, bytes, bytes]]]


async def trio_runner(argv: Sequence[str]) -> tuple[int, bytes, bytes]:
    p = await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True, check=False)
    return p.returncode, p.stdout, p.stderr


class RpctoolBackend(GuestBackend):
    def __init__(
        self,
        tool: str = "vmware-rpctool",
        runner: Runner | None = None,
        ledger: gi.SizeLedger | None = None,
    ) -> None:
        super().__init__(ledger)
        self.tool = tool
        self.runner = runner or trio_runner

    async def _run(self, command: str) -> tuple[int, bytes, bytes]:
        try:
            return await self.runner([self.tool, command])
        except (OSError, subprocess.SubprocessError) as e:
            raise BackendError(f"{self.tool}: {e}") from e

    async def get(self, key: str) -> str | None:
        rc, out, err = await self._run(f"info-get {key}")
        if rc != 0:
            msg = (err or out).decode("utf-8", "replace").strip()
            if "no value" in msg.lower() or rc == 1:
                return None
            raise BackendError(f"{self.tool} info-get {key}: exit {rc}: {msg}")
        text = out.decode("utf-8", "replace")
        return text[:-1] if text.endswith("\n") else text

    async def _set_many(self, updates: Mapping[str, str]) -> None:
        for k, v in updates.items():
            rc, out, err = await self._run(f"info-set {k} {v}")
            if rc != 0:
                msg = (err or out).decode("utf-8", "replace").strip()
                raise BackendError(f"{self.tool} info-set {k}: exit {rc}: {msg}")
