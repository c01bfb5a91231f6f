"""Throughput contenders of bench/session_exec.py: the same file's bytes moved from
the guest side to a reader through the sealed session (`vic console exec -- cat`),
through today's raw console path (a relayed raw stream read by `vic console attach`)
and through a socat relay; each returns wall seconds, bytes and CPU per process."""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path
from typing import Any

import trio
from _common import proc_cpu
from _session_chain import VM, Chain, raw_writer, start_socat, unlink, vic

CHUNK = 1 << 20


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the daemons still run)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    return {name: proc_cpu(pid) for name, pid in pids.items()}


def result(wall: float, moved: int, pids: dict[str, int], cpu0: dict[str, float]) -> dict[str, Any]:
    cpu = {name: proc_cpu(pid) - cpu0[name] for name, pid in pids.items()}
    return {"wall_s": wall, "bytes": moved, "cpu_s": cpu, "MBps": moved / wall / 1e6}


async def _count(stream: Any, want: int) -> int:
    got = 0
    while got < want:
        data = await stream.receive_some(CHUNK)
        if not data:
            break
        got += len(data)
    return got


async def session_cat(c: Chain, data: Path, size: int) -> dict[str, Any]:
    """`vic console exec VM -- cat DATA`, stdout counted here; the CLI's start included."""
    pids = c.pids()
    cpu0 = cpu_of(pids)
    client0 = children_cpu()
    t0 = time.monotonic()
    cmd = [*vic(), "console", "exec", "--socket", c.console, VM, "--", "cat", str(data)]
    proc = await trio.lowlevel.open_process(cmd, stdout=-1)
    assert proc.stdout is not None
    moved = await _count(proc.stdout, size)
    code = await proc.wait()
    wall = time.monotonic() - t0
    if code != 0 or moved != size:
        raise RuntimeError(f"session exec: exit {code}, {moved} of {size} bytes")
    out = result(wall, moved, pids, cpu0)
    out["cpu_s"]["client"] = children_cpu() - client0  # `vic console exec`, reaped
    return out


async def _send_file(sock: socket.socket, data: Path) -> None:
    def send() -> None:
        with open(data, "rb") as f:
            sock.sendfile(f)

    await trio.to_thread.run_sync(send)


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _wait_log(path: Path, size: int) -> int:
    """Until the console log holds ``size`` bytes (a bench harness: polling is fine)."""
    deadline = time.monotonic() + 600
    while (now := _log_size(path)) < size:
        if time.monotonic() > deadline:
            raise TimeoutError(f"console log {path}: {now} of {size} bytes")
        time.sleep(0.005)
    return now


async def _log_reaches(path: Path, size: int) -> int:
    return await trio.to_thread.run_sync(_wait_log, path, size)


async def raw_console(c: Chain, data: Path, size: int) -> dict[str, Any]:
    """DATA written into the relay's raw pipe until the vSPC's console log holds it."""
    pids = {"relay": c.relay.pid, "appliance": c.vspc.pid}
    sock = raw_writer(c)
    try:
        sock.sendall(b"sync\n")
        base = await _log_reaches(c.raw_log, _log_size(c.raw_log) + 5)
        cpu0 = cpu_of(pids)
        t0 = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_file, sock, data)
            moved = await _log_reaches(c.raw_log, base + size) - base
        wall = time.monotonic() - t0
        out = result(wall, moved, pids, cpu0)
    finally:
        sock.close()
    return out


async def socat_relay(tmp: Path, data: Path, size: int) -> dict[str, Any]:
    """DATA through a socat relay (Unix to Unix) into a reader here."""
    sink = str(tmp / "sink.sock")
    listener = trio.socket.socket(socket.AF_UNIX)
    await listener.bind(sink)
    listener.listen(1)
    proc, path = start_socat(tmp, sink)
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        conn, _ = await listener.accept()
        pids = {"relay": proc.pid}
        cpu0 = cpu_of(pids)
        t0 = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_file, sock, data)
            moved = await _count(trio.SocketStream(conn), size)
        wall = time.monotonic() - t0
        out = result(wall, moved, pids, cpu0)
        sock.close()
    finally:
        proc.kill()
        proc.wait()
        listener.close()
        unlink(sink, path)
    return out
