"""The relay daemon's configuration: TOML validated into frozen dataclasses.

Layout of ``relay.toml`` (see ``EXAMPLE`` below for a complete file)::

    host = "esx-a"                 # origin host written into every stream header
    [egress.appliance]             # one or more named egresses
    kind = "tcp"                   # tcp | unix | vsock | hvsock
    [limits] / [timeouts] / [metrics]
    [[tcp]] [[vspc]] [[pipe]] [[serial]] [[vsock]] [[hvsock]]   # ingress listeners

Every listener has a ``name`` unique across all kinds; on SIGHUP a listener whose
table is unchanged keeps running, a changed one is restarted, a removed one stops.
The listener tables themselves are in ``relay.ingress_config`` (re-exported here).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from common.io.tlsconfig import ClientTls
from common.link.config import PeerConfig
from common.ops import config as ops_config
from common.ops.config import ConfigError, load, loads, require
from common.proto.address import parse_address
from common.proto.identity import MAX_NAME, IdentityError, check_host
from relay.ingress_config import (
    LISTENER_KINDS,
    MAX_PORT,
    VSOCK_CID_ANY,
    HvsockListener,
    Listener,
    PipeListener,
    SerialListener,
    TcpListener,
    VsockListener,
    VspcListener,
)

__all__ = [
    "EXAMPLE",
    "LISTENER_KINDS",
    "ClientTls",
    "EgressConfig",
    "HvsockListener",
    "LimitsConfig",
    "Listener",
    "MetricsConfig",
    "PipeListener",
    "RelayConfig",
    "SerialListener",
    "TcpListener",
    "TimeoutsConfig",
    "VsockListener",
    "VspcListener",
    "load_config",
    "loads_config",
]


@dataclass(frozen=True)
class EgressConfig:
    """Where forwarded streams go: the appliance endpoint (or a VM-hosted one), or
    ``kind = "peer"``: resumable streams over the peer link of ``[peer.routes.<route>]``."""

    kind: Literal["tcp", "unix", "vsock", "hvsock", "peer"]
    host: str = ""
    port: int = 0
    path: Path | None = None
    cid: int = 0
    tls: ClientTls | None = None
    route: str = ""

    def validate(self) -> None:
        require(not self.route or self.kind == "peer", "route", "only a peer egress takes a route")
        if self.kind == "peer":
            require(bool(self.route), "route", "a peer egress names one of [peer.routes]")
        if self.kind == "tcp":
            require(bool(self.host), "host", "required for a tcp egress")
            require(0 < self.port <= MAX_PORT, "port", "must be 1..65535")
        elif self.kind in ("unix", "hvsock"):
            require(self.path is not None, "path", f"required for a {self.kind} egress")
        if self.kind == "vsock":
            require(2 <= self.cid < VSOCK_CID_ANY, "cid", "must be a guest or host CID (>= 2)")
            require(0 < self.port < VSOCK_CID_ANY, "port", "must be a vsock port number")
        if self.kind == "hvsock":
            require(0 < self.port < VSOCK_CID_ANY, "port", "must be a vsock port number")
        require(self.tls is None or self.kind == "tcp", "tls", "only a tcp egress takes tls")


@dataclass(frozen=True)
class LimitsConfig:
    max_streams: int = 10_000
    max_streams_per_vm: int = 64
    accept_rate: float = 500.0  # new streams per second (token bucket)
    accept_burst: int = 1000

    def validate(self) -> None:
        require(self.max_streams > 0, "max-streams", "must be positive")
        require(self.max_streams_per_vm > 0, "max-streams-per-vm", "must be positive")
        require(self.accept_rate > 0, "accept-rate", "must be positive")
        require(self.accept_burst > 0, "accept-burst", "must be positive")


@dataclass(frozen=True)
class TimeoutsConfig:
    """Seconds; 0 disables idle and stall."""

    connect: float = 10.0  # egress connect + handshake
    idle: float = 0.0  # no byte either way for this long closes the stream
    stall: float = 60.0  # a write that makes no progress for this long closes the stream
    drain: float = 30.0  # SIGTERM: live streams get this long to finish
    retry_min: float = 0.2  # reconnect backoff for pipe/serial/tcp-client ingress
    retry_max: float = 10.0

    def validate(self) -> None:
        for f in fields(self):
            require(getattr(self, f.name) >= 0, f.name.replace("_", "-"), "must be >= 0")
        require(self.connect > 0, "connect", "must be positive")
        require(self.retry_min > 0, "retry-min", "must be positive")
        require(self.retry_max >= self.retry_min, "retry-max", "must be >= retry-min")


@dataclass(frozen=True)
class MetricsConfig(ops_config.MetricsConfig):
    """``[metrics]``: the shared table with this daemon's default port: 9471, next to the
    vSPC's 9470 (it was 9108, graphite_exporter's, which an appliance may well run)."""

    port: int = 9471


@dataclass(frozen=True)
class RelayConfig:
    egress: dict[str, EgressConfig]
    host: str = ""  # "" = this machine's hostname
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tcp: tuple[TcpListener, ...] = ()
    vspc: tuple[VspcListener, ...] = ()
    pipe: tuple[PipeListener, ...] = ()
    serial: tuple[SerialListener, ...] = ()
    vsock: tuple[VsockListener, ...] = ()
    hvsock: tuple[HvsockListener, ...] = ()
    peer: PeerConfig | None = None
    handoff_socket: Path | None = None  # restart by handoff (relay.handoff)

    def validate(self) -> None:
        require(len(self.egress) > 0, "egress", "at least one egress is required")
        try:
            check_host(self.origin_host())
        except IdentityError as e:
            raise ConfigError("host", f"{e} (set host = NAME)") from None
        routes = self.peer.routes if self.peer is not None else {}
        for name, eg in self.egress.items():
            if eg.kind == "peer":
                require(
                    eg.route in routes,
                    f"egress.{name}.route",
                    f"no route {eg.route!r} in [peer.routes]",
                )
        if self.peer is not None:
            for i, pl in enumerate(self.peer.listen):
                if pl.forward:
                    continue
                key = f"peer.listen[{i}].egress"
                if pl.egress:
                    require(pl.egress in self.egress, key, f"no egress {pl.egress!r}")
                    target = self.egress[pl.egress]
                else:
                    target = self.default_egress()
                require(
                    target.kind != "peer",
                    key,
                    "streams accepted from peers go on to the appliance, not to another peer",
                )
        self._check_handoff()
        seen: dict[str, str] = {}
        for kind in LISTENER_KINDS:
            for i, lst in enumerate(getattr(self, kind)):
                key = f"{kind}[{i}]"
                require(bool(lst.name), f"{key}.name", "must not be empty")
                require(len(lst.name) <= MAX_NAME, f"{key}.name", f"at most {MAX_NAME} characters")
                if lst.name in seen:
                    raise ConfigError(
                        f"{key}.name", f"duplicate listener name (also {seen[lst.name]})"
                    )
                seen[lst.name] = key
                if lst.egress:
                    require(lst.egress in self.egress, f"{key}.egress", f"no egress {lst.egress!r}")
                else:
                    require(
                        len(self.egress) == 1 or "default" in self.egress,
                        f"{key}.egress",
                        "several egresses and none named 'default': name one",
                    )

    def _check_handoff(self) -> None:
        """Only what listens can be handed to the next process (relay.handoff): a
        device or an outgoing connection would be opened twice meanwhile; but a
        connect-mode pipe is: its successor waits for the stream it was passed
        and for the old process to exit (relay.handoff_holds)."""
        if self.handoff_socket is None:
            return
        held = [f"serial[{i}]" for i in range(len(self.serial))]
        held += [f"tcp[{i}]" for i, t in enumerate(self.tcp) if t.mode == "client"]
        held += [f"pipe[{i}]" for i, p in enumerate(self.pipe) if p.mode == "fifo"]
        require(
            not held,
            "handoff-socket",
            f"{held[0] if held else ''} opens a device or connects out: it cannot be handed "
            "to the next process (remove handoff-socket, or use listening ingress only)",
        )

    def bind_hosts(self) -> list[tuple[str, str]]:
        """(host, key) of every TCP listener, for ``--check``."""
        out = [(self.metrics.host, "metrics.host")] if self.metrics.enabled else []
        for kind in ("tcp", "vspc"):
            for i, lst in enumerate(getattr(self, kind)):
                if getattr(lst, "mode", "server") == "server":
                    out.append((lst.host, f"{kind}[{i}].host"))
        for i, pl in enumerate(self.peer.listen if self.peer is not None else ()):
            kind, where = parse_address(pl.address)
            if kind == "tcp":
                out.append((where[0], f"peer.listen[{i}].address"))
        return out

    def own_certificates(self) -> list[tuple[Path, str]]:
        """(path, key) of the certificates this relay presents."""
        out = [
            (eg.tls.cert, f"egress.{name}.tls.cert")
            for name, eg in self.egress.items()
            if eg.tls is not None and eg.tls.cert is not None
        ]
        if self.peer is not None and self.peer.tls is not None:
            out.append((self.peer.tls.cert, "peer.tls.cert"))
        return out

    def listener_key(self, name: str) -> str:
        """The TOML key of the listener called ``name``, e.g. ``vsock[0]``."""
        for kind in LISTENER_KINDS:
            for i, lst in enumerate(getattr(self, kind)):
                if lst.name == name:
                    return f"{kind}[{i}]"
        return name

    def origin_host(self) -> str:
        """The host name written into every origin header."""
        return self.host or socket.gethostname()

    def listeners(self) -> dict[str, Listener]:
        out: dict[str, Listener] = {}
        for kind in LISTENER_KINDS:
            for lst in getattr(self, kind):
                out[lst.name] = lst
        return out

    def egress_for(self, lst: Listener) -> EgressConfig:
        if lst.egress:
            return self.egress[lst.egress]
        return self.default_egress()

    def default_egress(self) -> EgressConfig:
        if "default" in self.egress:
            return self.egress["default"]
        return next(iter(self.egress.values()))


def load_config(path: str | Path) -> RelayConfig:
    return load(RelayConfig, path)


def loads_config(text: str) -> RelayConfig:
    return loads(RelayConfig, text)


EXAMPLE = """\
host = "esx-a"
log-level = "info"

[egress.default]              # straight to the appliance endpoint
kind = "tcp"                  # tcp | unix | vsock | hvsock
host = "10.0.0.5"
port = 7000
tls = { ca = "/etc/vic/ca.pem", cert = "/etc/vic/relay.pem", key = "/etc/vic/relay.key" }

[egress.fc-appliance]         # an appliance VM under Firecracker: CONNECT <port>
kind = "hvsock"
path = "/run/fc/appliance.vsock"
port = 7000

[limits]
max-streams = 10000
max-streams-per-vm = 64
accept-rate = 500.0           # new streams per second, burst below
accept-burst = 1000

[timeouts]                    # seconds; idle/stall 0 = off
connect = 10.0
idle = 0.0
stall = 60.0
drain = 30.0
retry-min = 0.2
retry-max = 10.0

[metrics]
enabled = true
host = "127.0.0.1"
port = 9471

[[vspc]]                      # ESX network serial port with vSPC URI telnet://relay:13370
name = "vspc"
port = 13370
host = "0.0.0.0"

[[tcp]]                       # network serial port, raw TCP, ESX connects in
name = "vm1-com1"
vm = "4213a2b0c9d84c6e9f8a1f2e3d4c5b6a"
port = 14001

[[tcp]]                       # ESX listens (server mode URI), the relay connects out
name = "vm2-com1"
vm = "vm2"
mode = "client"
host = "127.0.0.1"
port = 14002

[[pipe]]                      # named pipe; the VM end is the client, we listen
name = "vm3-pipe"
vm = "vm3"
path = "/run/vic/vm3.com1"
mode = "listen"               # listen | connect | fifo

[[serial]]
name = "vm4-tty"
vm = "vm4"
device = "/dev/ttyS1"
baudrate = 115200

[[vsock]]
name = "guests"
port = 2377
cids = { "3" = "vm5", "4" = "vm6" }
allow-unknown = false

[[hvsock]]                    # Firecracker guest connects to port 52: <uds-path>_52
name = "fc-vm7"
vm = "vm7"
uds-path = "/run/fc/vm7.vsock"
port = 52
egress = "fc-appliance"
"""
