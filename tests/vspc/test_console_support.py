"""Shared helpers for the console tests (no tests here)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from common.proto.console.protocol import AttachRequest, Mode
from vspc.console import ConsoleConfig, ConsoleService
from vspc.console.client import Endpoint, attach
from vspc.core.identity import PortKey
from vspc.metrics import VspcMetrics

UUID_RAW = "42 1d 2a 3b 4c 5d 6e 7f-80 91 a2 b3 c4 d5 e6 f7"
KEY = PortKey.from_raw(UUID_RAW)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory (Unix socket paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="vc", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_config(d: Path, **kw: Any) -> ConsoleConfig:
    base = ConsoleConfig(socket=d / "c.sock", log_dir=d / "logs", ring_bytes=4096)
    return replace(base, **kw)


async def start(nursery: trio.Nursery, config: ConsoleConfig) -> ConsoleService:
    svc = ConsoleService(config, VspcMetrics.create())
    await nursery.start(svc.run)
    return svc


def endpoint(svc: ConsoleService) -> Endpoint:
    assert svc.config.socket is not None
    return Endpoint(socket=svc.config.socket)


async def attach_client(
    svc: ConsoleService, vm: str, *, mode: Mode = "rw", replay: int = 0, label: str | None = None
) -> tuple[trio.abc.Stream, dict[str, Any], bytearray]:
    stream, status, rest = await attach(endpoint(svc), AttachRequest(vm, label, mode, replay))
    return stream, status, bytearray(rest)


async def read_exactly(stream: trio.abc.Stream, buf: bytearray, n: int) -> bytes:
    """Read until ``buf`` holds ``n`` bytes; return them and keep the rest in ``buf``."""
    while len(buf) < n:
        data = await stream.receive_some(65536)
        if not data:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes: {bytes(buf[-200:])!r}")
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


async def read_to_eof(stream: trio.abc.Stream, buf: bytearray) -> bytes:
    while True:
        data = await stream.receive_some(65536)
        if not data:
            out = bytes(buf)
            buf.clear()
            return out
        buf += data


def pattern(start: int, n: int) -> bytes:
    """Deterministic, position-dependent bytes (all 256 values appear)."""
    return bytes((i * 7 + (i >> 8)) & 0xFF for i in range(start, start + n))
