"""The chain bench/docker_endpoint.py measures: bench/session_exec.py's chain
(``_session_chain``: `vic vspc` with sessions, `vic relay`, the agent's tether in a
process of its own) with the appliance also serving the Docker endpoint on
``docker.sock``, and the tethered VM's container log holding a history written
beforehand, straight into the appliance's files in their format (CRI records,
``vspc.core.linelog``; ``<vm>_container.log`` and its rotated ``.1`` ... ``.N``):
producing a GiB through a session would take minutes and measure the tether, not
``docker logs``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import proc_cpu
from _session_chain import VM, Chain, _secret_written, relay_config, vspc_config
from _session_throughput import children_cpu

from common.io.guestinfo.filestore import FileStore
from common.proto import guestinfo as gi
from tests.support.daemons import run_daemon

BENCH = Path(__file__).resolve().parent
FILES = 4  # the live file and three rotated ones
TEXT = b"the container wrote this line of its history, about eighty bytes of it ....."
BASE_NS = 1_765_000_000 * 10**9  # December 2025: the history's first line


def docker_binary() -> str | None:
    return shutil.which("docker")


def docker_vspc_config(tmp: Path, history: int) -> str:
    """session_exec's appliance config (its last table is ``[sessions]``), rotation
    sized for ``history`` bytes in ``FILES`` files, and ``[docker]``."""
    per_file = max(4096, history // FILES + (1 << 20))
    return (
        vspc_config(tmp)
        + f"log-max-bytes = {per_file}\nlog-keep = {FILES}\n"
        + f'[docker]\nenabled = true\nsocket = "{tmp / "docker.sock"}"\n'
    )


def _block(first_ns: int, lines: int, stream: bytes) -> bytes:
    """``lines`` records a microsecond apart from ``first_ns`` (a whole millisecond:
    the block stays within its second)."""
    secs, frac = divmod(first_ns, 10**9)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)).encode()
    return b"".join(
        b"%s.%09dZ %s F %s %d\n" % (stamp, frac + i * 1000, stream, TEXT, i) for i in range(lines)
    )


def write_history(log_dir: Path, vm: str, total: int) -> int:
    """``total`` bytes (about) of stdout and stderr lines in time order, oldest in the
    highest-numbered rotated file; the bytes written."""
    log_dir.mkdir(parents=True, exist_ok=True)
    live = log_dir / f"{vm}_container.log"
    names = [live.with_name(f"{live.name}.{n}") for n in range(FILES - 1, 0, -1)] + [live]
    template = _block(0, 1000, b"stdout")  # the size of one block of 1,000 lines
    per_file = max(1, total // FILES // len(template))
    written, ns = 0, BASE_NS
    for path in names:
        with open(path, "wb") as f:
            for b in range(per_file):
                block = _block(ns, 1000, b"stderr" if b % 8 == 7 else b"stdout")
                f.write(block)
                written += len(block)
                ns += 1000 * 1000
    return written


@asynccontextmanager
async def docker_chain(tmp: Path, history: int, max_execs: int) -> AsyncIterator[tuple[Chain, int]]:
    """The chain up, the tether (taking ``max_execs`` at once) connected; (chain,
    history bytes written)."""
    (tmp / "gi").mkdir()
    written = await trio.to_thread.run_sync(write_history, tmp / "clogs", VM, history)
    async with run_daemon("vspc", tmp, docker_vspc_config(tmp, history)) as vspc:
        (tmp / "relay").mkdir()
        async with run_daemon("relay", tmp / "relay", relay_config(tmp)) as relay:
            await _secret_written(tmp)
            _running(tmp / "gi" / f"{VM}.json")
            cmd = [sys.executable, str(BENCH / "_docker_tether.py"), str(tmp / "vm.sock")]
            cmd += [str(tmp / "gi" / f"{VM}.json"), str(max_execs)]
            tether = await trio.lowlevel.open_process(cmd)
            try:
                yield Chain(tmp, vspc, relay, tether), written
            finally:
                tether.kill()
                await tether.wait()


def _running(store_file: Path) -> None:
    """The VM's session config (a main process that sleeps) and its start, in its
    guestinfo as the appliance and the agent write them: docker sees it running."""
    store = FileStore(store_file)
    cfg = gi.SessionConfig(id=f"c-{VM}", path="sleep", args=("sleep", "1000000"))
    store.update(gi.encode_sessions([cfg]))
    store.update(gi.encode_started(cfg.id, True, starttime=int(time.time())))


def docker_env(tmp: Path) -> dict[str, str]:
    return dict(
        os.environ,
        DOCKER_HOST=f"unix://{tmp / 'docker.sock'}",
        DOCKER_CONFIG=str(tmp / "docker-config"),
    )


async def count_stdout(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, int]:
    """Run ``cmd``, count its stdout here (as ``> /dev/null`` would drop it): (exit
    code, bytes)."""
    proc = await trio.lowlevel.open_process(cmd, stdout=-1, env=env)
    assert proc.stdout is not None
    got = 0
    while data := await proc.stdout.receive_some(1 << 20):
        got += len(data)
    return await proc.wait(), got


async def cat_through(c: Chain, cmd: list[str], size: int, env: dict[str, str]) -> dict[str, Any]:
    """Wall seconds, MB/s and CPU per process of ``cmd`` (a ``cat`` of ``size`` bytes
    in the guest); the client's start included, its CPU as ``client``."""
    pids = c.pids()
    cpu0 = {name: proc_cpu(pid) for name, pid in pids.items()}
    client0 = children_cpu()
    t0 = time.monotonic()
    code, moved = await count_stdout(cmd, env)
    wall = time.monotonic() - t0
    if code != 0 or moved != size:
        raise RuntimeError(f"{cmd[:3]}: exit {code}, {moved} of {size} bytes")
    cpu = {name: proc_cpu(pid) - cpu0[name] for name, pid in pids.items()}
    cpu["client"] = children_cpu() - client0
    return {"wall_s": wall, "bytes": moved, "cpu_s": cpu, "MBps": moved / wall / 1e6}
