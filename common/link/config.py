"""TOML configuration of the peer mesh, as frozen dataclasses (``common.ops.config``).

Meant to sit under ``[peer]`` in the relay's config::

    [peer]
    admin-socket = "/run/vic/relay.sock"
    route-state = "/var/lib/vic/relay-routes.json"   # optional: `route set` overrides
    tls = { cert = "/etc/vic/esx-01.crt", key = "/etc/vic/esx-01.key", ca = "/etc/vic/ca.crt" }

    [peer.routes.appliance]              # where resumable streams go
    address = "tcp:10.0.0.12:7443"       # the relay on the appliance's host (or the appliance)
    identity = "vic://host/esx-02"

    [[peer.listen]]                      # accept peer links (on the appliance's host)
    address = "tcp:0.0.0.0:7443"
    allowed-peers = ["vic://host/esx-01", "vic://host/esx-03"]

    [[peer.listen]]                      # plaintext only on a trusted transport
    address = "vsock:2:7443"
    tls = false
    egress = "appliance"                 # sessions end here; streams go on via [egress.appliance]

    [[peer.listen]]                      # or pass each link on to the appliance's link endpoint
    address = "tcp:0.0.0.0:7444"         # (streams then resume end to end, wherever it runs)
    allowed-peers = ["vic://host/esx-01"]
    forward = "vsock:3:7444"

    [peer.link]                          # optional tuning
    stream-window-kib = 4096
    frame-kib = 256                      # largest DATA frame; 1024 for bulk relay-to-relay links

    [peer.follow.appliance]              # optional: follow the appliance VM in vSphere
    vcenter = "vc.example.com"
    user = "relay@vsphere.local"
    password-file = "/etc/vic/vc.password"
    vm = "vch-appliance"
    [peer.follow.appliance.hosts]
    "esx-02.example.com" = "tcp:10.0.0.12:7443"
    "esx-03.example.com" = "tcp:10.0.0.13:7443"
    [peer.follow.appliance.identities]
    "esx-02.example.com" = "vic://host/esx-02"
    "esx-03.example.com" = "vic://host/esx-03"

``to_runtime()`` helpers turn these into ``Route``, ``TlsFiles``, ``LinkConfig``
and ``VSphereTarget`` objects.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import trio

from common.io.unixlisten import UnixListener, open_unix_listener
from common.io.vsphere import VSphereTarget
from common.link.peerlink import LinkConfig
from common.link.route import Route, RouteError
from common.link.tls import TlsFiles, client_context
from common.ops import inherit
from common.ops.config import ConfigError, require
from common.proto.address import is_trusted_address, parse_address, parse_forward
from common.proto.link.mux import MuxConfig

KiB = 1024
MiB = 1024 * 1024


@dataclass(frozen=True)
class PeerTls:
    cert: Path
    key: Path
    ca: Path

    def validate(self) -> None:
        for name in ("cert", "key", "ca"):
            p = getattr(self, name)
            require(p.is_file(), name, f"no such file: {p}")

    def files(self) -> TlsFiles:
        return TlsFiles(self.cert, self.key, self.ca)

    def check_loads(self, key: str) -> None:
        """Raise ConfigError(key) unless the certificate, its key and the CA load
        (at start and in ``--check``; ``validate`` only sees that the files exist)."""
        try:
            client_context(self.files())
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            why = " ".join(str(e).split())
            raise ConfigError(key, f"cannot load the certificates: {why}") from None


def _check_address(address: str) -> None:
    try:
        parse_address(address)
    except RouteError as e:
        raise ConfigError("address", str(e)) from None


@dataclass(frozen=True)
class PeerRoute:
    address: str
    identity: str = ""
    tls: bool = True

    def validate(self) -> None:
        _check_address(self.address)
        if self.tls:
            require(
                self.identity.startswith("vic://"),
                "identity",
                "a TLS route needs the peer identity (vic://host/NAME or vic://appliance/NAME)",
            )

    def route(self, name: str) -> Route:
        return Route(self.address, identity=self.identity, tls=self.tls, name=name)


@dataclass(frozen=True)
class PeerListen:
    """Accept peer links. Either the sessions end here and each stream goes on
    through ``egress`` (a named non-peer egress; "" = the default one), or, with
    ``forward``, each link is passed whole (TLS ended here, the peer's identity
    named first) to the appliance's link endpoint over a trusted transport, so
    that streams resume end to end at the appliance wherever it runs."""

    address: str
    tls: bool = True
    allowed_peers: list[str] = field(default_factory=list)
    forward: str = ""
    egress: str = ""

    def validate(self) -> None:
        _check_address(self.address)
        require(
            self.tls or is_trusted_address(self.address),
            "tls",
            "plaintext peer links only on a trusted transport (unix:, vsock:, loopback tcp:): "
            "any peer could open streams as any host",
        )
        if self.forward:
            try:
                parse_forward(self.forward)
            except RouteError as e:
                raise ConfigError("forward", str(e)) from None
            require(not self.egress, "egress", "a forwarding listener has no egress")
            require(
                self.tls,
                "forward",
                "a forwarded link needs TLS: the appliance is told the identity the peer proved",
            )
        if self.tls:
            require(
                bool(self.allowed_peers),
                "allowed-peers",
                "a TLS listener needs the identities it accepts",
            )
            for p in self.allowed_peers:
                require(p.startswith("vic://"), "allowed-peers", f"not a vic:// identity: {p!r}")


@dataclass(frozen=True)
class LinkTuning:
    stream_window_kib: int = 4096
    connection_window_mib: int = 64
    max_streams: int = 4096
    replay_limit_mib: int = 16
    replay_pool_mib: int = 256
    overflow: Literal["block", "discard"] = "block"
    ping_interval: float = 5.0
    dead_after: float = 15.0
    resume_timeout: float = 60.0
    # The largest DATA frame, and with it each link's read buffer and a stream's turn
    # on the link (half a frame). 1024 moves bulk for less CPU (bench/mesh_two_hop.py);
    # every link holds a read buffer of this size, so an appliance that thousands of
    # hosts link to keeps the default.
    frame_kib: int = 256

    def validate(self) -> None:
        require(self.stream_window_kib >= 64, "stream-window-kib", "must be >= 64")
        require(1 <= self.frame_kib <= 1024, "frame-kib", "must be 1..1024")
        require(
            self.connection_window_mib * 1024 >= self.stream_window_kib,
            "connection-window-mib",
            "must hold at least one stream window",
        )
        require(self.replay_limit_mib >= 1, "replay-limit-mib", "must be >= 1")
        require(self.replay_pool_mib >= 1, "replay-pool-mib", "must be >= 1")
        require(self.max_streams >= 1, "max-streams", "must be >= 1")
        require(
            0 < self.ping_interval < self.dead_after,
            "ping-interval",
            "must be > 0 and below dead-after",
        )
        require(self.resume_timeout > 0, "resume-timeout", "must be > 0")

    def link_config(self) -> LinkConfig:
        window = self.stream_window_kib * KiB
        frame = self.frame_kib * KiB
        return LinkConfig(
            mux=MuxConfig(
                max_payload=frame,
                stream_window=window,
                initial_window=min(128 * KiB, window),
                connection_window=self.connection_window_mib * MiB,
                max_streams=self.max_streams,
                ping_interval=self.ping_interval,
                dead_after=self.dead_after,
            ),
            replay_limit=self.replay_limit_mib * MiB,
            replay_pool=self.replay_pool_mib * MiB,
            overflow=self.overflow,
            resume_timeout=self.resume_timeout,
            read_size=max(frame, 256 * KiB),
            send_quantum=max(frame // 2, 1 * KiB),
        )


@dataclass(frozen=True)
class FollowConfig:
    vcenter: str
    vm: str
    hosts: dict[str, str]  # ESX host name -> address of the relay there
    identities: dict[str, str] = field(default_factory=dict)  # ESX host name -> vic:// identity
    port: int = 443
    protocol: Literal["https", "http"] = "https"
    path: str = "/sdk"
    user: str = ""
    password_file: Path | None = None
    verify_tls: bool = True
    tls: bool = True  # links to those relays use TLS

    def validate(self) -> None:
        require(0 < self.port <= 65535, "port", "must be 1..65535")
        require(bool(self.hosts), "hosts", "map at least one ESX host to a relay address")
        for host, addr in self.hosts.items():
            try:
                parse_address(addr)
            except RouteError as e:
                raise ConfigError(f"hosts.{host}", str(e)) from None
            if self.tls:
                require(
                    self.identities.get(host, "").startswith("vic://"),
                    f"identities.{host}",
                    "each host needs the identity of its relay",
                )
        if self.password_file is not None:
            require(
                self.password_file.is_file(), "password-file", f"no such file: {self.password_file}"
            )

    def vcenter_target(self) -> VSphereTarget:
        pw = self.password_file.read_text().strip() if self.password_file else ""
        return VSphereTarget(
            self.vcenter, self.port, self.user, pw, self.protocol, self.path, self.verify_tls
        )

    def routes(self, name: str) -> dict[str, Route]:
        return {
            h: Route(a, identity=self.identities.get(h, ""), tls=self.tls, name=name)
            for h, a in self.hosts.items()
        }


@dataclass(frozen=True)
class PeerConfig:
    tls: PeerTls | None = None
    admin_socket: Path | None = None
    route_state: Path | None = None  # route overrides (relay.route_state); default: by the socket
    routes: dict[str, PeerRoute] = field(default_factory=dict)
    listen: list[PeerListen] = field(default_factory=list)
    link: LinkTuning = field(default_factory=LinkTuning)
    follow: dict[str, FollowConfig] = field(default_factory=dict)

    def validate(self) -> None:
        uses_tls = (
            any(r.tls for r in self.routes.values())
            or any(x.tls for x in self.listen)
            or any(f.tls for f in self.follow.values())
        )
        require(
            self.tls is not None or not uses_tls,
            "tls",
            "TLS routes or listeners need [peer.tls] cert, key and ca",
        )
        for name in self.follow:
            require(
                name in self.routes,
                f"follow.{name}",
                "follows a route that is not defined in [peer.routes]",
            )

    def routes_runtime(self) -> dict[str, Route]:
        return {name: r.route(name) for name, r in self.routes.items()}


PeerListener: TypeAlias = trio.SocketListener | UnixListener


async def open_peer_listener(address: str, backlog: int = 128) -> PeerListener:
    """A listener for ``tcp:HOST:PORT``, ``unix:PATH`` or ``vsock:CID:PORT``."""
    kind, where = parse_address(address)
    if kind == "unix":
        return await open_unix_listener(where, mode=None, backlog=backlog)
    handed = inherit.inherit(f"peer {address}")
    if handed is not None:  # from the previous process (relay.handoff)
        sock = trio.socket.from_stdlib_socket(handed)
        inherit.register(f"peer {address}", sock)
        return trio.SocketListener(sock)
    if kind == "tcp":
        fam = socket.AF_INET6 if ":" in where[0] else socket.AF_INET
        sock = trio.socket.socket(fam, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    else:
        sock = trio.socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        await sock.bind(where)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    inherit.register(f"peer {address}", sock)
    return trio.SocketListener(sock)


def bound_address(listener: PeerListener) -> Any:
    """Where a peer listener can be reached: its TCP or vsock address, or its Unix path
    (a Unix socket's own name is the temporary one it was bound under)."""
    if isinstance(listener, UnixListener):
        return str(listener.path)
    return listener.socket.getsockname()
