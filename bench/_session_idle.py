"""Idle sessions for bench/session_exec.py: N simulated tethers
(``_session_idle_tethers.py``, a process of its own) each holding a session with a
fresh `vic vspc`; the vSPC's RSS delta per session, and the handshake time from
connecting to Established for reconnecting tethers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import trio
from _session_chain import BENCH, vspc_config
from _vspc_benchlib import rss_kib

sys.path.insert(0, str(BENCH.parent))

from tests.support.daemons import run_daemon


async def _line(stream: Any, buf: bytearray) -> bytes:
    while b"\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            raise RuntimeError("the simulated tethers exited")
        buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


async def idle_sessions(tmp: Path, n: int, probes: int) -> dict[str, Any]:
    """RSS per idle session at ``n`` sessions, and ``probes`` reconnect handshakes."""
    os.makedirs(tmp / "gi")
    async with run_daemon("vspc", tmp, vspc_config(tmp)) as vspc:
        await trio.sleep(1)  # let the fresh daemon settle before its baseline
        before = rss_kib(vspc.pid)
        cmd = [sys.executable, str(BENCH / "_session_idle_tethers.py")]
        cmd += [str(tmp / "endpoint.sock"), str(tmp / "gi"), str(n)]
        proc = await trio.lowlevel.open_process(cmd, stdin=-1, stdout=-1)
        assert proc.stdin is not None and proc.stdout is not None
        buf = bytearray()
        try:
            with trio.fail_after(600):
                assert await _line(proc.stdout, buf) == b"ready"
                await trio.sleep(2)  # idle
                after = rss_kib(vspc.pid)
                await proc.stdin.send_all(f"{probes}\n".encode())
                times = json.loads(await _line(proc.stdout, buf))
        finally:
            proc.kill()
            await proc.wait()
    return {
        "sessions": n,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_session": (after - before) / n,
        "handshake_s": times,
    }
