"""Which config ``vic vspc`` runs: ``--config FILE``, else ``/etc/vic/vspc.toml``, else
the built-in defaults (no file at all): loopback listeners and sockets, logs and
state in directories the daemon may create (``common.ops.config.runtime_dir`` and
friends: systemd's ``RuntimeDirectory=``/``LogsDirectory=``/``StateDirectory=``,
``/run/vic`` and ``/var/log/vic`` for root, per-user directories otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.ops import config as cfgmod
from vspc.config import VspcConfig

ENDPOINT_PORT = 13371


def builtin_table() -> dict[str, Any]:
    """The built-in config as the TOML tables it stands for (validated by ``build``)."""
    run, logs, state = cfgmod.runtime_dir(), cfgmod.logs_dir(), cfgmod.state_dir()
    return {
        "listen": {"host": "127.0.0.1", "port": 13370},
        "endpoint": {
            "host": "127.0.0.1",
            "port": ENDPOINT_PORT,
            "unix": str(run / "endpoint.sock"),
        },
        "console": {"socket": str(run / "console.sock"), "log-dir": str(logs / "consoles")},
        "sessions": {
            "logs-dir": str(logs / "containers"),
            "guestinfo-dir": str(state / "guestinfo"),
        },
        "metrics": {"host": "127.0.0.1"},
    }


def builtin_config() -> VspcConfig:
    return cfgmod.build(VspcConfig, builtin_table())


def load_vspc_config(given: str | Path | None) -> tuple[Path | None, VspcConfig]:
    """(the file read, its config); (None, built-in defaults) when no ``--config`` was
    given and the default file does not exist. A given file that is missing is an error."""
    path = cfgmod.config_path(given, "vspc")
    if given is None and not path.exists():
        return None, builtin_config()
    return path, cfgmod.load(VspcConfig, path)
