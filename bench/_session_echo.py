"""Keystroke echo round trips for bench/session_exec.py: a key typed on a local
terminal (a pty here) to `vic console exec -t VM -- cat` (appliance -> relay ->
tether -> the guest's pty, whose echo comes back the same way), against `vic console
attach` on the raw console path with the guest end echoing what it reads."""

from __future__ import annotations

import os
import pty
import socket
import time
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from _session_chain import RAW, VM, Chain, raw_writer, vic

KEYS = b"abcdefghijklmnopqrstuvwxyz"


@asynccontextmanager
async def on_terminal(cmd: list[str]) -> AsyncIterator[tuple[int, trio.lowlevel.FdStream]]:
    """``cmd`` with a pty as its terminal: (the master fd to type on, a stream to read)."""
    master, slave = pty.openpty()
    tty.setraw(slave)  # as the CLI does: no local echo, only the far end's
    proc = await trio.lowlevel.open_process(
        cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    screen = trio.lowlevel.FdStream(os.dup(master))
    try:
        yield master, screen
    finally:
        proc.kill()
        await proc.wait()
        await screen.aclose()
        os.close(master)


async def _round_trip(master: int, screen: trio.lowlevel.FdStream, key: bytes) -> float:
    t0 = time.perf_counter()
    os.write(master, key)
    seen = b""
    while key not in seen:
        seen = (await screen.receive_some(4096))[-64:]
    return time.perf_counter() - t0


async def _settle(master: int, screen: trio.lowlevel.FdStream) -> None:
    """Type until a key comes back (the far end is up), then let the rest drain."""
    with trio.fail_after(60):
        while True:
            with trio.move_on_after(0.5):
                await _round_trip(master, screen, b"z")
                break
    with trio.move_on_after(0.3):
        while await screen.receive_some(4096):
            pass


async def _keystrokes(cmd: list[str], n: int) -> list[float]:
    async with on_terminal(cmd) as (master, screen):
        await _settle(master, screen)
        with trio.fail_after(max(60, n * 0.5)):
            return [await _round_trip(master, screen, KEYS[i % 25 : i % 25 + 1]) for i in range(n)]


async def session_echo(c: Chain, n: int) -> list[float]:
    """Round trips (s) of ``n`` keys to `cat` in a tty exec."""
    cmd = [*vic(), "console", "exec", "--socket", c.console, "-i", "-t", VM, "--", "cat"]
    return await _keystrokes(cmd, n)


async def _echo(sock: socket.socket) -> None:
    s = trio.socket.from_stdlib_socket(sock)
    while data := await s.recv(4096):
        await s.send(data)


async def raw_echo(c: Chain, n: int) -> list[float]:
    """Round trips (s) of ``n`` keys through `vic console attach` on the raw path,
    the guest end echoing each byte."""
    sock = raw_writer(c)
    cmd = [*vic(), "console", "attach", "--socket", c.console, "--no-notices", RAW]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_echo, sock)
            out = await _keystrokes(cmd, n)
            nursery.cancel_scope.cancel()
    finally:
        sock.close()
    return out


def percentiles(xs: list[float]) -> dict[str, Any]:
    s = sorted(xs)
    return {
        "n": len(s),
        "p50_ms": 1e3 * s[len(s) // 2],
        "p99_ms": 1e3 * s[min(len(s) - 1, int(len(s) * 0.99))],
    }
