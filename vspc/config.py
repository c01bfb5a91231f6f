"""`vic vspc` configuration: TOML validated into frozen dataclasses."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from common.io.tlsconfig import ServerTls
from common.io.vsphere import VSphereTarget
from common.link.config import LinkTuning, PeerTls
from common.link.route import RouteError
from common.ops import config as ops_config
from common.ops.config import ConfigError, require
from common.proto.address import is_loopback_host, is_trusted_address, parse_address
from vspc.console.config import ConsoleConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def address_allowed(address: str, networks: tuple[Network, ...]) -> bool:
    """Whether a peer at ``address`` (an IP, no port) is in one of ``networks``."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


@dataclass(frozen=True)
class ListenConfig:
    """Where ESX hosts connect with Telnet (the vSPC URI's host and port).

    ``allowed-sources``: the networks ESX hosts connect from (their management
    networks, CIDRs); a connection from elsewhere is closed at accept. Required when
    ``host`` is not a loopback address; on loopback it defaults to loopback only.
    ``identify-timeout``: seconds a connection has to name its VM (VM-VC-UUID).
    ``idle-probe``: seconds of silence before a liveness probe (IAC DO TIMING-MARK);
    ``probe-timeout``: seconds a probe may go unanswered before the connection is
    taken for dead (closed; a takeover of its port from another source may proceed)."""

    host: str = "127.0.0.1"
    port: int = 13370
    tls: ServerTls | None = None
    allowed_sources: tuple[str, ...] | None = None
    identify_timeout: float = 10.0
    idle_probe: float = 60.0
    probe_timeout: float = 5.0

    def validate(self) -> None:
        require(0 <= self.port <= 65535, "port", "must be 0..65535")
        if self.tls is not None:
            self.tls.check_files("tls")
        require(
            self.allowed_sources is not None or is_loopback_host(self.host),
            "allowed-sources",
            f"required when host ({self.host!r}) is not a loopback "
            'address: the networks ESX hosts connect from, e.g. ["10.0.0.0/8"]',
        )
        for i, cidr in enumerate(self.allowed_sources or ()):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as e:
                raise ConfigError(f"allowed-sources[{i}]", str(e)) from None
        require(self.identify_timeout > 0, "identify-timeout", "must be positive")
        require(self.idle_probe > 0, "idle-probe", "must be positive")
        require(self.probe_timeout > 0, "probe-timeout", "must be positive")

    def source_networks(self) -> tuple[Network, ...]:
        """The networks a Telnet connection may come from."""
        if self.allowed_sources is None:
            return LOOPBACK_NETWORKS
        return tuple(ipaddress.ip_network(c, strict=False) for c in self.allowed_sources)


@dataclass(frozen=True)
class LinkListen:
    """Accept peer links from relays (the mesh): resumable streams end here.

    ``forwarded = true``: a relay on this host ends TLS and forwards the link over
    a trusted transport, naming the identity its peer proved first; otherwise the
    link is TLS (``[endpoint.link-tls]``) from a relay in ``allowed-peers``, or
    plaintext with ``tls = false`` on a trusted transport."""

    address: str
    tls: bool = True
    allowed_peers: list[str] = field(default_factory=list)
    forwarded: bool = False

    def validate(self) -> None:
        try:
            parse_address(self.address)
        except RouteError as e:
            raise ConfigError("address", str(e)) from None
        require(
            self.tls or is_trusted_address(self.address),
            "tls",
            "plaintext links (and forwarded ones) only on a trusted transport "
            "(unix:, vsock:, loopback tcp:): any peer could open streams as any host",
        )
        if self.forwarded:
            require(not self.tls, "tls", "a forwarded link arrives without TLS (set tls = false)")
        elif self.tls:
            require(
                bool(self.allowed_peers),
                "allowed-peers",
                "a TLS link listener needs the identities it accepts",
            )


@dataclass(frozen=True)
class VCenterCheck:
    """``[endpoint.vcenter]``: a relay's header may speak only for VMs that vCenter
    says run on that relay's host (``runtime.host`` name = the header's host)."""

    url: str  # https://vc.example.com/sdk (http://... for govmomi's simulator)
    user: str = ""
    password_file: Path | None = None
    refresh: float = 30.0  # seconds a placement snapshot is trusted
    min_refresh: float = 2.0  # an unknown or moved VM asks vCenter again at most this often
    verify_tls: bool = True  # check vCenter's certificate (a forged answer speaks for any VM)

    def validate(self) -> None:
        try:
            VSphereTarget.from_url(self.url)
        except ValueError as e:
            raise ConfigError("url", str(e)) from None
        require(self.refresh > 0, "refresh", "must be positive")
        require(0 <= self.min_refresh <= self.refresh, "min-refresh", "must be 0..refresh")
        require(
            self.password_file is None or self.password_file.is_file(),
            "password-file",
            f"no such file: {self.password_file}",
        )

    def target(self) -> VSphereTarget:
        t = VSphereTarget.from_url(self.url)
        password = self.password_file.read_text().strip() if self.password_file else t.password
        return replace(t, user=self.user or t.user, password=password, verify_tls=self.verify_tls)


@dataclass(frozen=True)
class EndpointConfig:
    """Where relays deliver streams (origin header first): TCP and/or a Unix socket;
    and resumable streams over peer links (``[[endpoint.link]]``).

    Whoever reaches the endpoint speaks for the VMs its headers name, so TCP off
    loopback needs ``[endpoint.tls]`` with ``client-ca`` (a relay's certificate
    then speaks only for its own host) unless ``insecure = true``; with
    ``[endpoint.vcenter]`` only for VMs vCenter places on that host."""

    host: str | None = None
    port: int = 0
    unix: Path | None = None
    tls: ServerTls | None = None
    insecure: bool = False
    vcenter: VCenterCheck | None = None
    header_timeout: float = 10.0
    link: tuple[LinkListen, ...] = ()
    link_tls: PeerTls | None = None
    link_tuning: LinkTuning = field(default_factory=LinkTuning)
    # per raw stream, the last bytes sent to the VM, kept to send again when a relay
    # on the path restarts and the VM's end never got them (vspc.core.continuation)
    resend_bytes: int = 65536

    def validate(self) -> None:
        require(0 <= self.port <= 65535, "port", "must be 0..65535")
        require(self.header_timeout > 0, "header-timeout", "must be positive")
        require(0 <= self.resend_bytes <= 1 << 30, "resend-bytes", "must be 0..1073741824")
        if self.tls is not None:
            self.tls.check_files("tls")
        self._check_trust()
        if self.link_tls is not None:
            for name in ("cert", "key", "ca"):
                p = getattr(self.link_tls, name)
                require(p.is_file(), f"link-tls.{name}", f"no such file: {p}")
        for i, ln in enumerate(self.link):
            require(
                not ln.tls or self.link_tls is not None,
                f"link[{i}].tls",
                "TLS link listeners need [endpoint.link-tls] cert, key and ca",
            )

    def _check_trust(self) -> None:
        """Whoever reaches a plaintext endpoint speaks for any VM it names and gets that
        VM's console input: off loopback, the relay must prove who it is (mTLS)."""
        if self.host is None or self.insecure or is_loopback_host(self.host):
            return
        require(
            self.tls is not None and self.tls.client_ca is not None,
            "tls",
            f"host {self.host!r} is not loopback: relays must authenticate, set "
            "[endpoint.tls] cert, key and client-ca (or insecure = true)",
        )

    def relay_certificates(self) -> bool:
        """Relays present certificates (TLS with a client CA on the TCP endpoint)."""
        return self.host is not None and self.tls is not None and self.tls.client_ca is not None


@dataclass(frozen=True)
class VMotionConfig:
    timeout: float = 30.0
    max_concurrent: int = 64
    max_per_source: int = 8  # pending vMotions BEGUN from one source address
    buffer_bytes: int = 1 << 20
    secret_bytes: int = 8

    def validate(self) -> None:
        require(self.timeout > 0, "timeout", "must be positive")
        require(self.max_concurrent >= 1, "max-concurrent", "must be at least 1")
        require(self.max_per_source >= 1, "max-per-source", "must be at least 1")
        require(self.buffer_bytes >= 1024, "buffer-bytes", "must be at least 1024")
        require(4 <= self.secret_bytes <= 64, "secret-bytes", "must be 4..64")


@dataclass(frozen=True)
class MetricsConfig(ops_config.MetricsConfig):
    """``[metrics]``: the shared table with this daemon's default port."""

    port: int = 9470


@dataclass(frozen=True)
class ProxyRule:
    """How to answer DO-PROXY: first matching rule wins; no match means accept."""

    direction: Literal["S", "C", "*"] = "*"
    uri_prefix: str = ""
    accept: bool = True


@dataclass(frozen=True)
class SessionsVSphere:
    """``[sessions.vsphere]``: the vCenter (or ESX) whose VMs' guestinfo takes the
    session secrets (``guestinfo = "vsphere"``): ``config.extraConfig`` written by
    ReconfigVM, as ``common.io.vsphere`` does. The account needs
    VirtualMachine.Config.AdvancedConfig on the container VMs."""

    url: str  # https://vc.example.com/sdk (http://... for govmomi's simulator)
    user: str = ""  # else the URL's
    password_file: Path | None = None  # else the URL's password
    verify_tls: bool = True

    def validate(self) -> None:
        try:
            VSphereTarget.from_url(self.url)
        except ValueError as e:
            raise ConfigError("url", str(e)) from None
        require(
            self.password_file is None or self.password_file.is_file(),
            "password-file",
            f"no such file: {self.password_file}",
        )

    def target(self) -> VSphereTarget:
        t = VSphereTarget.from_url(self.url, verify_tls=self.verify_tls)
        password = self.password_file.read_text().strip() if self.password_file else t.password
        return replace(t, user=self.user or t.user, password=password)


@dataclass(frozen=True)
class SessionsConfig:
    """``[sessions]``: sessions with tethered VMs (issue 13; ``vspc.sessions``).

    ``enabled``: relayed streams labelled ``session`` go to the session service
    (off: they are refused). ``logs-dir``: the container logs (None: kept in
    memory only while followed). ``log-max-bytes``/``log-keep``: rotation per VM.
    ``replay-limit``: bytes each channel-stream holds for replay across a break.
    ``guestinfo``: where the per-VM secrets are written: ``"file"``, the file
    guestinfo store in ``guestinfo-dir`` (one ``<vm>.json`` per VM), or
    ``"vsphere"``, each VM's guestinfo through ``[sessions.vsphere]``.
    ``handshake-timeout``: seconds for a connection to be sealed. ``secret-bytes``:
    the length of each VM's secret. ``max-vms``: sessions held at most (a stream
    for one more VM is refused)."""

    enabled: bool = True
    logs_dir: Path | None = None
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 4
    replay_limit: int = 1 << 20
    guestinfo: Literal["file", "vsphere"] = "file"
    guestinfo_dir: Path | None = None
    vsphere: SessionsVSphere | None = None
    handshake_timeout: float = 10.0
    secret_bytes: int = 32
    max_vms: int = 4096

    def validate(self) -> None:
        if self.logs_dir is not None:
            ops_config.require_writable_dir(self.logs_dir, "logs-dir")
        if self.guestinfo_dir is not None:
            require(self.guestinfo == "file", "guestinfo-dir", 'only with guestinfo = "file"')
            ops_config.require_writable_dir(self.guestinfo_dir, "guestinfo-dir")
        if (self.guestinfo == "vsphere") != (self.vsphere is not None):
            need = self.vsphere is None
            raise ConfigError("vsphere", "required" if need else 'only with guestinfo = "vsphere"')
        require(self.log_max_bytes >= 4096, "log-max-bytes", "must be at least 4096")
        require(0 <= self.log_keep <= 100, "log-keep", "must be 0..100")
        require(4096 <= self.replay_limit <= 1 << 30, "replay-limit", "must be 4096..1073741824")
        require(self.handshake_timeout > 0, "handshake-timeout", "must be positive")
        require(16 <= self.secret_bytes <= 64, "secret-bytes", "must be 16..64")
        require(self.max_vms >= 1, "max-vms", "must be at least 1")


@dataclass(frozen=True)
class VspcConfig:
    listen: ListenConfig = field(default_factory=ListenConfig)
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    vmotion: VMotionConfig = field(default_factory=VMotionConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    proxy: tuple[ProxyRule, ...] = ()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def bind_hosts(self) -> list[tuple[str, str]]:
        """(host, key) of every TCP listener, for ``--check``."""
        out = [(self.listen.host, "listen.host")]
        if self.endpoint.host is not None:
            out.append((self.endpoint.host, "endpoint.host"))
        if self.metrics.enabled:
            out.append((self.metrics.host, "metrics.host"))
        if self.console.tcp is not None:
            out.append((self.console.tcp.host, "console.tcp.host"))
        for i, ln in enumerate(self.endpoint.link):
            kind, where = parse_address(ln.address)
            if kind == "tcp":
                out.append((where[0], f"endpoint.link[{i}].address"))
        return out

    def own_certificates(self) -> list[tuple[Path, str]]:
        """(path, key) of the certificates the appliance presents."""
        out = [
            (t.cert, f"{k}.cert")
            for t, k in (
                (self.listen.tls, "listen.tls"),
                (self.endpoint.tls, "endpoint.tls"),
                (self.console.tcp, "console.tcp"),
            )
            if t is not None
        ]
        if self.endpoint.link_tls is not None:
            out.append((self.endpoint.link_tls.cert, "endpoint.link-tls.cert"))
        return out

    def proxy_accepts(self, direction: str, uri: str) -> bool:
        for rule in self.proxy:
            if rule.direction in ("*", direction) and uri.startswith(rule.uri_prefix):
                return rule.accept
        return True
