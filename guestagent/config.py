"""``vic agent`` configuration (TOML -> frozen dataclasses).

Example::

    [guestinfo]
    backend = "file"            # "rpctool" inside a vSphere VM, "vsphere" for vcsim
    path = "/run/lab/vm1.json"  # file backend
    # tool = "vmware-rpctool"   # rpctool backend
    # url = "http://vic:vic@127.0.0.1:8989/sdk"   # vsphere backend
    # vm = "DC0_H0_VM0"
    poll-interval = 0.25

    [console]
    transport = "hybrid"        # serial | vsock | hybrid | unix | tcp | none
    path = "/run/lab/vm1.vsock" # serial device, unix socket, or hybrid uds path
    port = 1024                 # vsock / hybrid / tcp port
    # cid = 2  baud = 115200  host = "127.0.0.1"

    [session]                   # sealed sessions (exec) with the appliance, issue 13
    enabled = false
    transport = "console"       # console (take over [console]'s channel) | serial | vsock
                                # | hybrid | unix | tcp, with path/port/cid/host/baud as there
    # or several, preferred first, tried in that order on every (re)connect:
    # transports = ["hybrid", "serial"]
    # [session.hybrid]          # one table per transport listed (not for "console")
    # path = "/run/lab/vm1.vsock"
    # port = 1024
    # [session.serial]
    # path = "/dev/ttyS1"

    [network]
    publish = true
    exclude = ["lo"]
    names = { eth0 = "public" }

    [agent]
    subreaper = true
    exit-when-done = false

    [metrics]                   # the agent's own Prometheus metrics (guestagent.metrics)
    enabled = false             # off by default: nobody scrapes a guest
    host = "127.0.0.1"
    port = 9472
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from common.ops import config as ops_config
from common.ops.config import ConfigError, require


@dataclass(frozen=True)
class GuestinfoConfig:
    backend: Literal["file", "rpctool", "vsphere"] = "rpctool"
    path: str = ""
    tool: str = "vmware-rpctool"
    url: str = ""
    vm: str = ""
    poll_interval: float = 0.25
    max_value: int = 64 * 1024
    max_total: int = 1024 * 1024

    def validate(self) -> None:
        if self.backend == "file":
            require(bool(self.path), "path", 'required for backend = "file"')
        if self.backend == "vsphere":
            require(self.url.startswith(("http://", "https://")), "url", "need an http(s) URL")
            require(bool(self.vm), "vm", 'required for backend = "vsphere" (VM name or UUID)')
        require(self.poll_interval > 0, "poll-interval", "must be > 0")
        require(self.max_value > 0, "max-value", "must be > 0")
        require(self.max_total >= self.max_value, "max-total", "must be >= max-value")


@dataclass(frozen=True)
class ConsoleConfig:
    transport: Literal["serial", "vsock", "hybrid", "unix", "tcp", "none"] = "none"
    path: str = ""
    port: int = 0
    cid: int = 2
    host: str = "127.0.0.1"
    baud: int = 115200
    buffer_bytes: int = 4 * 1024 * 1024
    backoff_min: float = 0.05
    backoff_max: float = 2.0
    flush_timeout: float = 300.0

    def validate(self) -> None:
        if self.transport in ("serial", "unix", "hybrid"):
            require(bool(self.path), "path", f"required for transport = {self.transport!r}")
        if self.transport in ("vsock", "hybrid", "tcp"):
            require(0 < self.port < 2**32, "port", f"required for transport = {self.transport!r}")
        if self.transport == "tcp":
            require(self.port <= 65535, "port", "must be 1..65535")
        require(self.buffer_bytes >= 4096, "buffer-bytes", "must be >= 4096")
        require(0 < self.backoff_min <= self.backoff_max, "backoff-min", "need 0 < min <= max")
        require(self.baud > 0, "baud", "must be > 0")


SessionTransportKind = Literal["console", "serial", "vsock", "hybrid", "unix", "tcp"]


@dataclass(frozen=True)
class TransportTable:
    """Where one of ``[session] transports`` connects (``[session.<kind>]``)."""

    path: str = ""
    port: int = 0
    cid: int = 2
    host: str = "127.0.0.1"
    baud: int = 115200

    def channel(self, kind: str) -> ConsoleConfig:
        return ConsoleConfig(
            transport=kind,  # type: ignore[arg-type]  # checked by the Literal of transports
            path=self.path,
            port=self.port,
            cid=self.cid,
            host=self.host,
            baud=self.baud,
        )


@dataclass(frozen=True)
class SessionSection:
    """The tether's sealed session. ``transport = "console"`` takes over the console's
    channel (the raw console link is then off: a tethered VM's output goes through
    sessions); any other transport is its own channel, configured like ``[console]``.
    ``transports`` lists several instead, preferred first, each configured in its own
    ``[session.<kind>]`` table: the tether tries them in order on every (re)connect
    and the session resumes over whichever connects (serial to vsock, say).
    ``idle-timeout`` finds an appliance that restarted behind a line that never ends
    (serial); set it only when the appliance sends keepalives too, or an idle session
    would be dropped and re-established every ``idle-timeout`` seconds."""

    enabled: bool = False
    transport: SessionTransportKind = "console"
    path: str = ""
    port: int = 0
    cid: int = 2
    host: str = "127.0.0.1"
    baud: int = 115200
    transports: tuple[SessionTransportKind, ...] = ()
    serial: TransportTable | None = None
    vsock: TransportTable | None = None
    hybrid: TransportTable | None = None
    unix: TransportTable | None = None
    tcp: TransportTable | None = None
    handshake_timeout: float = 10.0
    backoff_min: float = 0.05
    backoff_max: float = 2.0
    max_execs: int = 64
    replay_bytes: int = 1024 * 1024
    stdin_bytes: int = 16 * 1024 * 1024
    drain_grace: float = 2.0
    keepalive: float = 10.0  # seconds of write silence before a keepalive; 0: none
    idle_timeout: float = 0.0  # end a connection silent this long; 0: never (see below)

    def validate(self) -> None:
        if self.transports:
            self._validate_transports()
        elif self.transport != "console":
            TransportTable(self.path, self.port, self.cid, self.host, self.baud).channel(
                self.transport
            ).validate()
        for kind in _TABLES:
            require(
                getattr(self, kind) is None or kind in self.transports,
                kind,
                f'a [session.{kind}] table, but "{kind}" is not in transports',
            )
        require(self.handshake_timeout > 0, "handshake-timeout", "must be > 0")
        require(0 < self.backoff_min <= self.backoff_max, "backoff-min", "need 0 < min <= max")
        require(0 < self.max_execs <= 1000, "max-execs", "must be 1..1000")
        require(self.replay_bytes >= 4096, "replay-bytes", "must be >= 4096")
        require(self.stdin_bytes >= 4096, "stdin-bytes", "must be >= 4096")
        require(self.drain_grace >= 0, "drain-grace", "must be >= 0")
        require(self.keepalive >= 0, "keepalive", "must be >= 0 (0: none)")
        require(
            self.idle_timeout == 0 or self.idle_timeout > 2 * self.keepalive > 0,
            "idle-timeout",
            "must be 0 (never) or more than twice keepalive",
        )

    def _validate_transports(self) -> None:
        single = (self.transport, self.path, self.port) != ("console", "", 0)
        require(not single, "transports", "give transport (with path/port) or transports, not both")
        for i, kind in enumerate(self.transports):
            require(
                kind not in self.transports[:i], f"transports[{i}]", f"{kind!r} is listed twice"
            )
            if kind == "console":
                continue
            table: TransportTable | None = getattr(self, kind)
            require(table is not None, f"transports[{i}]", f"{kind!r} needs a [session.{kind}]")
            assert table is not None
            try:
                table.channel(kind).validate()
            except ConfigError as e:
                raise ConfigError(f"{kind}.{e.key}", e.message) from None

    def kinds(self) -> tuple[SessionTransportKind, ...]:
        """The transports, preferred first."""
        return self.transports or (self.transport,)

    def channels(self, console: ConsoleConfig) -> list[ConsoleConfig]:
        """The channels the session may connect over, preferred first."""
        if not self.transports:
            return [self.channel(console)]
        out = []
        for kind in self.transports:
            table: TransportTable | None = getattr(self, kind, None)
            out.append(console if table is None else table.channel(kind))
        return out

    def channel(self, console: ConsoleConfig) -> ConsoleConfig:
        """The channel the session connects over (the first, with ``transports``)."""
        if self.transports:
            return self.channels(console)[0]
        if self.transport == "console":
            return console
        return TransportTable(self.path, self.port, self.cid, self.host, self.baud).channel(
            self.transport
        )


_TABLES = ("serial", "vsock", "hybrid", "unix", "tcp")


@dataclass(frozen=True)
class NetworkConfig:
    publish: bool = True
    exclude: list[str] = field(default_factory=lambda: ["lo"])
    names: dict[str, str] = field(default_factory=dict)
    include_link_local: bool = False


@dataclass(frozen=True)
class AgentSection:
    subreaper: bool = True
    exit_when_done: bool = False
    drain_grace: float = 2.0
    console_session: str = ""
    signal_group: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class MetricsConfig(ops_config.MetricsConfig):
    """``[metrics]`` (guestagent.metrics): off unless asked for, on loopback when on;
    port 9472, next to the relay's 9471 and the vSPC's 9470."""

    enabled: bool = False
    port: int = 9472


@dataclass(frozen=True)
class AgentConfig:
    guestinfo: GuestinfoConfig = field(default_factory=GuestinfoConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    agent: AgentSection = field(default_factory=AgentSection)
    session: SessionSection = field(default_factory=SessionSection)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def validate(self) -> None:
        if self.session.enabled and "console" in self.session.kinds():
            require(
                self.console.transport != "none",
                "session.transports" if self.session.transports else "session.transport",
                '"console" needs a [console] transport',
            )
