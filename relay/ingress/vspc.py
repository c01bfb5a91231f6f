"""vSPC Telnet pass-through: ESX's network serial port points its vSPC URI at the
relay; the relay forwards the Telnet bytes untouched (option 232 included), so the
appliance's vSPC negotiates with ESX end to end and sees vMotion as it happens.

The VM's identity travels inside the Telnet stream, so the relay does not know it:
the origin header names the ESX peer instead (``esx-<address>``) and per-VM limits
do not apply (only the global one)."""

from __future__ import annotations

from typing import Any

import trio

from relay.config import VspcListener
from relay.ingress import IngressSink
from relay.ingress.tcp import serve_tcp_listener


async def serve(
    cfg: VspcListener, sink: IngressSink, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    await serve_tcp_listener(
        cfg.host, cfg.port, cfg.name, "vspc", "", cfg.label, sink, task_status=task_status
    )
