"""The appliance's certificates at run time: which files it watches, which it reports.

``cert_keys``: (path, config key) of every certificate the vSPC presents or trusts
(the ESX listener, endpoint, console TCP, Docker TCP and link endpoint: each
certificate and client CA), for ``vspc_cert_not_after_timestamp_seconds{cert}``.
``watch``: reloads the service (as SIGHUP does, with the running config) when one
of those files, a key, or a CA's CRL changes; the reload re-reads the files of
every TLS context in place (``common.io.tlsrefresh``), so new handshakes use the
new certificate and CRL and live connections are untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from common.io.tlsrefresh import crl_path
from vspc.config import VspcConfig


class _Reloadable(Protocol):
    config: VspcConfig

    async def reload(self, config: VspcConfig) -> None: ...


def _tables(cfg: VspcConfig) -> list[tuple[Any, str]]:
    docker_tls = cfg.docker.tcp.tls if cfg.docker.tcp else None
    tables: list[tuple[Any, str]] = [
        (cfg.listen.tls, "listen.tls"),
        (cfg.endpoint.tls, "endpoint.tls"),
        (cfg.console.tcp, "console.tcp"),
        (docker_tls, "docker.tcp.tls"),
        (cfg.endpoint.link_tls, "endpoint.link-tls"),
    ]
    return [(t, k) for t, k in tables if t is not None]


def _ca_of(table: Any) -> Path | None:
    ca = getattr(table, "client_ca", None) or getattr(table, "ca", None)
    return ca if isinstance(ca, Path) else None


def cert_keys(cfg: VspcConfig) -> list[tuple[Path, str]]:
    out = list(cfg.own_certificates())
    for table, key in _tables(cfg):
        ca = _ca_of(table)
        if ca is not None:
            out.append((ca, f"{key}.{'ca' if key == 'endpoint.link-tls' else 'client-ca'}"))
    return out


def watched_paths(cfg: VspcConfig) -> list[Path]:
    out: list[Path] = []
    for table, _key in _tables(cfg):
        out += [table.cert, table.key]
        ca = _ca_of(table)
        if ca is not None:
            out += [ca, crl_path(ca)]
    return out


async def watch(service: _Reloadable, *, task_status: Any) -> None:
    """Reload ``service`` with its running config when its certificate files change."""
    from common.io.certwatch import watch_files  # not for `--check`

    await watch_files(
        lambda: watched_paths(service.config),
        lambda: service.reload(service.config),
        task_status=task_status,
    )
