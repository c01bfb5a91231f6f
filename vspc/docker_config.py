"""``[docker]`` in ``vic vspc``'s TOML: the Docker Engine API endpoint (issue 14).

[docker]
enabled = true
socket = "/run/vic/docker.sock"     # DOCKER_HOST=unix:///run/vic/docker.sock
socket-mode = 0o660
socket-group = "docker"
keepalive = 10.0                    # TCP: a vanished client is dropped ~20 s later
# SIGHUP applies changes (vspc.docker.reload) but `enabled`; live connections carry on

[docker.tcp]                        # optional; off loopback only with TLS
host = "10.0.0.5"
port = 2376
[docker.tcp.tls]                    # docker --tlsverify: client certificates only
cert = "/etc/vic/docker.pem"
key = "/etc/vic/docker.key"
client-ca = "/etc/vic/ca.pem"
"""

from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass
from pathlib import Path

from common.io.tlsconfig import ServerTls
from common.ops import config as ops_config
from common.ops.config import require
from common.proto.address import is_loopback_host

DEFAULT_DOCKER_SOCKET = Path("/run/vic/docker.sock")


@dataclass(frozen=True)
class DockerTcpConfig:
    """``[docker.tcp]``: the Docker endpoint on TCP. Off loopback only with
    ``[docker.tcp.tls]`` and its ``client-ca`` (docker's ``--tlsverify``: clients
    show certificates, e.g. from ``vic certs``); plaintext only on loopback."""

    host: str = "127.0.0.1"
    port: int = 2376
    tls: ServerTls | None = None

    def validate(self) -> None:
        require(0 <= self.port <= 65535, "port", "must be 0..65535")
        if self.tls is None:
            require(
                is_loopback_host(self.host),
                "tls",
                f"host {self.host!r} is not loopback: plaintext TCP would let anyone on the "
                "network run docker verbs; set [docker.tcp.tls] cert, key and client-ca",
            )
            return
        self.tls.check_files("tls")
        require(
            self.tls.client_ca is not None,
            "tls.client-ca",
            "the Docker endpoint takes client certificates only (docker --tlsverify)",
        )


@dataclass(frozen=True)
class DockerConfig:
    """``[docker]``: the Docker Engine API endpoint (issue 14; ``vspc.docker``).

    ``enabled``: serve it (off by default). ``socket``: its Unix socket (None:
    none), ``socket-mode`` its permissions, ``socket-owner``/``socket-group`` a
    user and group (names or numbers; empty: the daemon's). ``tcp``: optional
    TCP (``DockerTcpConfig``). ``max-clients``: connections at once (more are
    closed at accept); ``max-header-bytes``: a request's line and headers;
    ``request-timeout``: seconds to send a request's head; ``keepalive``: seconds
    of silence on a TCP connection before probing it (a client that vanished is
    dropped about ``keepalive * 2`` seconds later, hijacked or not)."""

    enabled: bool = False
    socket: Path | None = DEFAULT_DOCKER_SOCKET
    socket_mode: int = 0o660
    socket_owner: str = ""
    socket_group: str = ""
    tcp: DockerTcpConfig | None = None
    max_clients: int = 256
    max_header_bytes: int = 65536
    request_timeout: float = 30.0
    keepalive: float = 10.0

    def validate(self) -> None:
        require(0 <= self.socket_mode <= 0o777, "socket-mode", "must be a file mode like 0o660")
        require(self.max_clients >= 1, "max-clients", "must be at least 1")
        require(
            1024 <= self.max_header_bytes <= 1 << 20, "max-header-bytes", "must be 1024..1048576"
        )
        require(self.request_timeout > 0, "request-timeout", "must be positive")
        require(1 <= self.keepalive <= 7200, "keepalive", "must be 1..7200 seconds")
        if self.socket_owner:
            require(_uid(self.socket_owner) is not None, "socket-owner", "no such user")
        if self.socket_group:
            require(_gid(self.socket_group) is not None, "socket-group", "no such group")
        if self.enabled:
            require(
                self.socket is not None or self.tcp is not None,
                "socket",
                "a Unix socket or [docker.tcp] is required",
            )
            if self.socket is not None:
                ops_config.require_writable_dir(self.socket.parent, "socket")

    def owner_ids(self) -> tuple[int, int]:
        """(uid, gid) for the socket; -1 leaves one as it is."""
        uid = _uid(self.socket_owner) if self.socket_owner else -1
        gid = _gid(self.socket_group) if self.socket_group else -1
        return (-1 if uid is None else uid), (-1 if gid is None else gid)


def _uid(name: str) -> int | None:
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _gid(name: str) -> int | None:
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None
