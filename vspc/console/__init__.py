"""The appliance's console service: logs, replay and attach for every VM serial port.

Used alike by the vSPC (ESX Telnet) and the relay endpoint (raw streams).
The names below are imported on first use, so that ``vspc.console.config`` (all the
``vic console`` CLI needs to parse its flags) does not bring trio and the service in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vspc.console.clientqueue import Client
    from vspc.console.config import ConsoleConfig, ConsoleTcpConfig
    from vspc.console.hub import Console, ConsoleBusy
    from vspc.console.info import ConsoleInfo
    from vspc.console.lookup import LookupFailed
    from vspc.console.service import ConsoleService

_WHERE = {
    "Client": "vspc.console.clientqueue",
    "ConsoleConfig": "vspc.console.config",
    "ConsoleTcpConfig": "vspc.console.config",
    "Console": "vspc.console.hub",
    "ConsoleBusy": "vspc.console.hub",
    "ConsoleInfo": "vspc.console.info",
    "LookupFailed": "vspc.console.lookup",
    "ConsoleService": "vspc.console.service",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


__all__ = [
    "Client",
    "Console",
    "ConsoleBusy",
    "ConsoleConfig",
    "ConsoleInfo",
    "ConsoleService",
    "ConsoleTcpConfig",
    "LookupFailed",
]
