"""Helpers for the end-to-end vMotion tests: the service's side of a simulator
connection, a port's key and events, opening a VM, waiting for held bytes."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing

from tests.support.waiting import wait_until
from vic.lab.esx_sim import (
    EsxConnection,
    SimVM,
)
from vspc.console.logfile import file_stem
from vspc.core.identity import DEFAULT_LABEL, PortKey
from vspc.esx_conn import EsxConnection as ServerConn
from vspc.service import VspcService

HOST = "127.0.0.1"
FF_SECRET = b"\xff\x00\xff\xfe\xff\xff\x01\xff"


def server_conn(service: VspcService, sim: EsxConnection) -> ServerConn:
    """The service's side of a simulator connection (matched by address)."""
    local = sim.stream.socket.getsockname()  # type: ignore[attr-defined]
    peer = f"{local[0]}:{local[1]}"
    for c in service.board.connections():
        assert isinstance(c, ServerConn)
        if c.peer == peer:
            return c
    raise AssertionError(f"no server connection for {peer}")


def key_of(vm: SimVM, label: str | None = None) -> PortKey:
    return PortKey(vm.canonical_uuid, label or DEFAULT_LABEL)


async def events_of(service: VspcService, key: PortKey) -> list[dict[str, object]]:
    await service.consoles.writer.flush()
    assert service.config.console.log_dir is not None
    path = service.config.console.log_dir / f"{file_stem(key)}.events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


async def open_vm(
    service: VspcService, nursery: trio.Nursery, vm: SimVM, **knobs: Any
) -> EsxConnection:
    assert service.esx_port is not None
    return await EsxConnection.open(nursery, HOST, service.esx_port, vm=vm, **knobs)


async def held(service: VspcService, key: PortKey, n: int) -> None:
    """Wait until ``n`` appliance->VM bytes are held by the switchboard for ``key``."""
    await trio.testing.wait_all_tasks_blocked()
    await wait_until(lambda: service.board.to_vm_buffered(key) == n)
