"""What the parts of the vSPC service share: its state, and the calls one part
makes on another.

``vspc.service.VspcService`` is assembled from parts, each a module named for what
it does: the ESX and metrics listeners (``vspc.esx_listener``), carrying out the
switchboard's actions (``vspc.action_runner``) and the meaning of ESX session
events (``vspc.esx_events``). Each part derives from ``ServiceShape``, which
declares the state the service's ``__init__`` sets up and the calls a part makes on
another, so that every part type-checks on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import trio
from prometheus_client import Counter

from vspc.backlog import ConsoleBacklogs
from vspc.config import Network, VspcConfig
from vspc.console.hub import Link
from vspc.console.service import ConsoleService
from vspc.core.identity import PortKey
from vspc.core.liveness import LivenessTable
from vspc.core.switchboard import Action, Switchboard
from vspc.esx_conn import EsxConnection
from vspc.metrics import VspcMetrics


@dataclass(eq=False)
class Server:
    """A running listener task (ESX listeners or the metrics server)."""

    scope: trio.CancelScope
    done: trio.Event


class ServiceShape:
    config: VspcConfig
    metrics: VspcMetrics
    consoles: ConsoleService
    board: Switchboard
    liveness: LivenessTable
    backlogs: ConsoleBacklogs
    relayed_vm_check: Callable[[str, str], Coroutine[Any, Any, str | None]] | None
    esx_port: int | None
    metrics_port: int | None
    _allowed: tuple[Network, ...]
    _secret_source: Callable[[int], bytes]
    _links: dict[PortKey, Link]  # ports whose console has this service's link
    _room: dict[PortKey, trio.Event]
    _displays: dict[PortKey, str]
    _deadline_changed: trio.Event
    _tasks: trio.Nursery | None
    _handlers: trio.Nursery | None
    _listener: Server | None
    _metrics_server: Server | None
    _draining: bool
    _carried: int
    _bytes_to_vm: Counter
    _bytes_from_vm: Counter

    def handle_esx_stream(
        self, stream: trio.abc.Stream, peer: str, *, park: bool = False
    ) -> Coroutine[Any, Any, None]:
        raise NotImplementedError

    async def to_vm(self, key: PortKey, data: bytes) -> None:
        raise NotImplementedError

    def _probe(self, conn: EsxConnection) -> None:
        raise NotImplementedError

    async def _execute(
        self,
        actions: list[Action],
        *,
        received: float | None = None,
        answer_on: EsxConnection | None = None,
    ) -> None:
        raise NotImplementedError


def as_esx(conn: object) -> EsxConnection:
    """A switchboard ``Conn`` token as the ESX connection it is."""
    assert isinstance(conn, EsxConnection)
    return conn
