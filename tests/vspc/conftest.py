from __future__ import annotations

from collections.abc import AsyncIterator
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
