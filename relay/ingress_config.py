"""The relay's ingress listener tables (``[[tcp]] [[vspc]] [[pipe]] [[serial]]
[[vsock]] [[hvsock]]`` in ``relay.toml``, see ``relay.config``), as frozen dataclasses.

The names a listener writes into origin headers are checked against the identity
grammar here, at load time, never on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.ops.config import ConfigError, require
from common.proto.identity import IdentityError, check_label, vm_key

MAX_PORT = 65535
# VMADDR_CID_ANY; also the largest CID.
VSOCK_CID_ANY = 0xFFFFFFFF


def _port_ok(port: int) -> bool:
    return 0 <= port <= MAX_PORT


def _check_identity(vm: str | None, label: str, vm_key_name: str = "vm") -> None:
    """The names a listener writes into origin headers must be inside the identity
    grammar the appliance checks (common.proto.identity): refuse them here, never on
    the wire."""
    try:
        if vm is not None:
            vm_key(vm)
    except IdentityError as e:
        raise ConfigError(vm_key_name, str(e)) from None
    try:
        if label:
            check_label(label)
    except IdentityError as e:
        raise ConfigError("label", str(e)) from None


@dataclass(frozen=True)
class TcpListener:
    """Network serial port as raw TCP: ESX connects in (server) or the relay connects out."""

    name: str
    vm: str
    port: int
    host: str = "127.0.0.1"
    mode: Literal["server", "client"] = "server"
    label: str = "serial0"
    egress: str = ""

    def validate(self) -> None:
        require(_port_ok(self.port), "port", "must be 0..65535")
        require(self.mode == "server" or self.port > 0, "port", "client mode needs a port")
        _check_identity(self.vm, self.label)


@dataclass(frozen=True)
class VspcListener:
    """ESX connects here as if to the vSPC; its Telnet goes to the appliance untouched."""

    name: str
    port: int
    host: str = "127.0.0.1"
    label: str = "vspc"
    egress: str = ""

    def validate(self) -> None:
        require(_port_ok(self.port), "port", "must be 0..65535")
        _check_identity(None, self.label)


@dataclass(frozen=True)
class PipeListener:
    """Pipe-backed serial port: a Unix socket the relay listens on or connects to, or a
    FIFO pair ``<path>.in`` (relay writes) / ``<path>.out`` (relay reads)."""

    name: str
    vm: str
    path: Path
    mode: Literal["listen", "connect", "fifo"] = "listen"
    label: str = "serial0"
    egress: str = ""

    def validate(self) -> None:
        _check_identity(self.vm, self.label)


@dataclass(frozen=True)
class SerialListener:
    """A tty (serial device or pty) configured through pyserial."""

    name: str
    vm: str
    device: Path
    baudrate: int = 115200
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: Literal[1, 2] = 1
    xonxoff: bool = False
    rtscts: bool = False
    label: str = "serial0"
    egress: str = ""

    def validate(self) -> None:
        require(self.baudrate > 0, "baudrate", "must be positive")
        _check_identity(self.vm, self.label)


@dataclass(frozen=True)
class VsockListener:
    """AF_VSOCK listener; the peer CID names the VM through ``cids``."""

    name: str
    port: int
    cids: dict[str, str] = field(default_factory=dict)
    allow_unknown: bool = False
    bind_cid: int = VSOCK_CID_ANY
    label: str = "vsock"
    egress: str = ""

    def validate(self) -> None:
        require(0 < self.port < VSOCK_CID_ANY, "port", "must be a vsock port number")
        for k in self.cids:
            shown = k if len(k) <= 12 else f"{k[:12]}..."
            require(
                k.isdigit() and len(k) <= 10 and 3 <= int(k) < VSOCK_CID_ANY,
                f"cids.{shown}",
                "not a guest CID",
            )
            _check_identity(self.cids[k], "", f"cids.{shown}")
        _check_identity(None, self.label)

    def cid_map(self) -> dict[int, str]:
        return {int(k): v for k, v in self.cids.items()}

    def __hash__(self) -> int:
        return hash((self.name, self.port, tuple(sorted(self.cids.items()))))


@dataclass(frozen=True)
class HvsockListener:
    """Hybrid vsock, guest-initiated: the VMM connects to ``<uds-path>_<port>``."""

    name: str
    vm: str
    uds_path: Path
    port: int
    label: str = ""
    egress: str = ""

    def validate(self) -> None:
        require(0 < self.port < VSOCK_CID_ANY, "port", "must be a vsock port number")
        _check_identity(self.vm, self.label or f"vsock-{self.port}")

    @property
    def socket_path(self) -> Path:
        return Path(f"{self.uds_path}_{self.port}")


Listener = (
    TcpListener | VspcListener | PipeListener | SerialListener | VsockListener | HvsockListener
)
LISTENER_KINDS = ("tcp", "vspc", "pipe", "serial", "vsock", "hvsock")
