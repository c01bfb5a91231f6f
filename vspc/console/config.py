"""Configuration of the console service: a frozen dataclass for ``common.ops.config``.

In the vSPC's TOML it is the ``[console]`` table, e.g.::

    [console]
    socket = "/run/vic/console.sock"
    socket-mode = 0o600
    log-dir = "/var/log/vic/consoles"
    log-max-bytes = 8388608
    log-keep = 5
    ring-bytes = 65536
    client-queue-bytes = 262144
    log-hold-bytes = 4194304
    retention = 86400.0
    max-departed = 1000

    [console.tcp]          # optional: TCP with mutual TLS
    host = "127.0.0.1"
    port = 7701
    cert = "/etc/vic/console.pem"
    key = "/etc/vic/console.key"
    client-ca = "/etc/vic/clients-ca.pem"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.ops.config import require, require_writable_dir

DEFAULT_SOCKET = Path("/run/vic/console.sock")
DEFAULT_LOG_DIR = Path("/var/log/vic/consoles")


@dataclass(frozen=True)
class ConsoleTcpConfig:
    """TCP listener with mutual TLS: a server certificate and the CA that signs clients."""

    cert: Path
    key: Path
    client_ca: Path
    host: str = "127.0.0.1"
    port: int = 7701

    def validate(self) -> None:
        require(0 <= self.port <= 65535, "port", "must be 0..65535")
        require(bool(self.host), "host", "must not be empty")


@dataclass(frozen=True)
class ConsoleConfig:
    """Console service settings. Sizes are bytes, times seconds.

    * ``socket``: the Unix attach socket (None = no Unix endpoint); ``socket_mode``
      its file permissions.
    * ``tcp``: optional TCP endpoint with mutual TLS.
    * ``log_dir``: where ``<uuid>_<label>.log`` and ``.events.jsonl`` go (None = no
      logs); rotated at ``log_max_bytes`` to ``.1``, ``.2``... keeping ``log_keep``
      rotated files besides the live one.
    * ``log_queue_bytes``: per port, VM bytes waiting for the disk before ``from_vm``
      waits (backpressure, never a drop); ``log_queue_total_bytes`` the same over all
      ports. 4 MiB: a VM writing in bulk is then written in batches of about 2 MiB
      (``vspc.console.logwriter.URGENT_BYTES``), a quarter as many hand-offs to the
      log thread as with 1 MiB (and ~10% less vSPC CPU per console byte).
    * ``log_hold_bytes``: while the log disk is full, the bytes held in memory (over
      all ports) for a retry; VMs wait beyond that (their connections are not
      read). Bytes that cannot be written for any other reason are dropped and
      recorded as gaps in the event log. It also caps what one Telnet port may
      queue for a slow log.
    * ``retention``: how long a departed VM's console (no connection, no client)
      stays in memory; ``max_departed`` how many departed consoles at most (the
      oldest go first). Their log files stay and serve ``list`` and replay.
    * ``ring_bytes``: replay ring per port (allocated as data arrives).
    * ``client_queue_bytes``: per attached client; a client further behind than this
      is disconnected with a notice. ``max_clients`` per port.
    * ``drop_notice_timeout``: how long a dropped client gets to take its notice.
    * ``request_timeout``: to send the request line (and finish TLS) after connecting.
    """

    socket: Path | None = DEFAULT_SOCKET
    socket_mode: int = 0o600
    tcp: ConsoleTcpConfig | None = None
    log_dir: Path | None = DEFAULT_LOG_DIR
    log_max_bytes: int = 8 * 1024 * 1024
    log_keep: int = 5
    log_queue_bytes: int = 4 * 1024 * 1024
    log_queue_total_bytes: int = 64 * 1024 * 1024
    log_hold_bytes: int = 4 * 1024 * 1024
    retention: float = 86400.0
    max_departed: int = 1000
    ring_bytes: int = 64 * 1024
    client_queue_bytes: int = 256 * 1024
    max_clients: int = 64
    drop_notice_timeout: float = 2.0
    request_timeout: float = 10.0

    def validate(self) -> None:
        require(0 <= self.socket_mode <= 0o777, "socket-mode", "must be a file mode like 0o600")
        require(self.log_max_bytes >= 1, "log-max-bytes", "must be >= 1")
        require(self.log_keep >= 0, "log-keep", "must be >= 0")
        require(self.log_queue_bytes >= 1, "log-queue-bytes", "must be >= 1")
        require(
            self.log_queue_total_bytes >= self.log_queue_bytes,
            "log-queue-total-bytes",
            "must be >= log-queue-bytes",
        )
        require(self.log_hold_bytes >= 0, "log-hold-bytes", "must be >= 0")
        require(self.retention >= 0, "retention", "must be >= 0 seconds")
        require(self.max_departed >= 0, "max-departed", "must be >= 0")
        require(self.ring_bytes >= 0, "ring-bytes", "must be >= 0")
        require(self.client_queue_bytes >= 1, "client-queue-bytes", "must be >= 1")
        require(self.max_clients >= 1, "max-clients", "must be >= 1")
        require(self.drop_notice_timeout >= 0, "drop-notice-timeout", "must be >= 0")
        require(self.request_timeout > 0, "request-timeout", "must be > 0")
        if self.log_dir is not None:
            require_writable_dir(self.log_dir, "log-dir")
        if self.socket is not None:
            require_writable_dir(self.socket.parent, "socket")
        require(
            self.socket is not None or self.tcp is not None,
            "socket",
            "a Unix socket or a [console.tcp] endpoint is required",
        )
