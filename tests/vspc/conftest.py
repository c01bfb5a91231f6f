from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from vspc.config import ListenConfig, MetricsConfig, VMotionConfig, VspcConfig
from vspc.console.config import ConsoleConfig
from vspc.service import VspcService


def make_config(tmp_path: Path, **vmotion: object) -> VspcConfig:
    return VspcConfig(
        listen=ListenConfig(host="127.0.0.1", port=0),
        console=ConsoleConfig(socket=tmp_path / "console.sock", log_dir=tmp_path / "logs"),
        vmotion=replace(VMotionConfig(), **vmotion),  # type: ignore[arg-type]
        metrics=MetricsConfig(enabled=True, host="127.0.0.1", port=0),
    )


@pytest.fixture
async def vspc(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[VspcService]:
    service: VspcService = await nursery.start(VspcService(make_config(tmp_path)).run)
    yield service


# ---- helpers for the end-to-end tests (ESX simulator + real attach socket)


async def start_vspc(
    tmp_path: Path,
    nursery: trio.Nursery,
    *,
    console: dict[str, object] | None = None,
    secret_source: Callable[[int], bytes] | None = None,
    **vmotion: object,
) -> VspcService:
    """A VspcService on kernel sockets; ``vmotion``/``console`` override config fields."""
    config = make_config(tmp_path, **vmotion)
    if console:
        config = replace(config, console=replace(config.console, **console))  # type: ignore[arg-type]
    kwargs: dict[str, object] = {}
    if secret_source is not None:
        kwargs["secret_source"] = secret_source
    service: VspcService = await nursery.start(VspcService(config, **kwargs).run)  # type: ignore[arg-type]
    return service


async def read_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        assert chunk, f"stream ended after {len(buf)} of {n} bytes: {bytes(buf[-200:])!r}"
        buf += chunk
    return bytes(buf)


async def attach_console(
    service: VspcService,
    uuid: str,
    mode: str = "ro",
    *,
    label: str | None = None,
    replay: int = 1 << 16,
) -> trio.abc.Stream:
    """Attach through the real Unix socket; returns the live byte stream."""
    from common.proto.console import protocol as proto
    from vspc.console import client as cc
    from vspc.prefixed import PrefixedStream

    ep = cc.Endpoint(socket=service.config.console.socket)
    req = proto.AttachRequest(vm=uuid, mode=mode, replay=replay, label=label)  # type: ignore[arg-type]
    stream, status, rest = await cc.attach(ep, req)
    assert status.get("ok"), status
    return PrefixedStream(stream, rest)


def metric(service: VspcService, name: str, **labels: str) -> float:
    value = service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
