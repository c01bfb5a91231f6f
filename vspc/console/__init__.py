"""The appliance's console service: logs, replay and attach for every VM serial port.

Used alike by the vSPC (ESX Telnet) and the relay endpoint (raw streams).
"""

from vspc.console.clientqueue import Client
from vspc.console.config import ConsoleConfig, ConsoleTcpConfig
from vspc.console.hub import Console, ConsoleBusy, ConsoleInfo
from vspc.console.lookup import LookupFailed
from vspc.console.service import ConsoleService

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
