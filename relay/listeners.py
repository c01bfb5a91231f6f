"""The relay's listeners (``[listen.*]``): one task each, in its own cancel scope,
started, kept or restarted on reload by ``common.ops.reconcile``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from common.io.listen import listen_error
from common.ops.config import ConfigError
from common.ops.reconcile import Plan, diff, start_all
from relay.carry import reason
from relay.ingress import hvsock as hvsock_ingress
from relay.ingress import pipe as pipe_ingress
from relay.ingress import serialdev as serial_ingress
from relay.ingress import tcp as tcp_ingress
from relay.ingress import vsock as vsock_ingress
from relay.ingress import vspc as vspc_ingress
from relay.ingress_config import (
    HvsockListener,
    Listener,
    PipeListener,
    SerialListener,
    TcpListener,
    VsockListener,
    VspcListener,
)

log = logging.getLogger("relay")

_SERVE: dict[type, Callable[..., Awaitable[None]]] = {
    TcpListener: tcp_ingress.serve,
    VspcListener: vspc_ingress.serve,
    PipeListener: pipe_ingress.serve,
    SerialListener: serial_ingress.serve,
    VsockListener: vsock_ingress.serve,
    HvsockListener: hvsock_ingress.serve,
}

# Per listener kind: the key of what it binds, and of the host part (if any).
_BIND_KEYS: dict[type, tuple[str, str | None]] = {
    TcpListener: ("port", "host"),
    VspcListener: ("port", "host"),
    PipeListener: ("path", None),
    SerialListener: ("device", None),
    VsockListener: ("port", "bind-cid"),
    HvsockListener: ("uds-path", None),
}


@dataclass
class _ListenerRun:
    cfg: Listener
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stopped: trio.Event = field(default_factory=trio.Event)
    bound: Any = None
    error: BaseException | None = None


class Listeners:
    """The running listeners, by name; ``sink`` is what they hand streams to
    (the daemon: relay.ingress's IngressSink)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.running: dict[str, _ListenerRun] = {}
        self.nursery: trio.Nursery | None = None

    @property
    def bound(self) -> dict[str, Any]:
        return {name: run.bound for name, run in self.running.items()}

    def plan(self, wanted: dict[str, Listener]) -> Plan[str, Listener]:
        return diff({name: run.cfg for name, run in self.running.items()}, wanted)

    async def stop(self, plan: Plan[str, Listener]) -> None:
        """Stop the changed and removed listeners (their addresses are free after)."""
        for name in plan.stop:
            log.info(
                "listener %s: %s", name, "changed, restarting" if plan.restarts(name) else "removed"
            )
            run = self.running[name]
            run.scope.cancel()
            await run.stopped.wait()
            del self.running[name]

    async def start(
        self,
        plan: Plan[str, Listener],
        key_of: Callable[[str], str],
        on_started: Callable[[str], object],
    ) -> list[ConfigError]:
        """Start the new and changed listeners; each failure names its TOML key."""

        async def start(name: str, lst: Listener) -> None:
            run = _ListenerRun(lst)
            assert self.nursery is not None
            run.bound = await self.nursery.start(self._listener_task, run)
            if run.error is not None:
                raise _listener_error(key_of(name), lst, run.error)
            on_started(name)
            self.running[name] = run

        return await start_all(plan.start, start)

    async def _listener_task(self, run: _ListenerRun, *, task_status: Any) -> None:
        started = False

        class _Status:
            def started(self, value: Any = None) -> None:
                nonlocal started
                started = True
                task_status.started(value)

        try:
            with run.scope:
                await _SERVE[type(run.cfg)](run.cfg, self.sink, task_status=_Status())
        except Exception as e:
            run.error = e
            if started:
                log.error("listener %s stopped: %s", run.cfg.name, reason(e))
                self.running.pop(run.cfg.name, None)
            else:
                task_status.started(None)
        finally:
            run.stopped.set()


def _listener_error(key: str, lst: Listener, e: BaseException) -> ConfigError:
    """A listener that could not start, as a ConfigError naming its TOML key."""
    field_key, host_field = _BIND_KEYS[type(lst)]
    if isinstance(e, ConfigError):
        return e
    if isinstance(e, OSError):
        return listen_error(
            e,
            f"{key}.{field_key}",
            host_key=f"{key}.{host_field}" if host_field else None,
            where=f"listener {lst.name!r}",
        )
    return ConfigError(f"{key}.{field_key}", f"listener {lst.name!r} cannot start: {reason(e)}")
