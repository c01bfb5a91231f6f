"""``[docker]`` on SIGHUP: a new config applied to a running ``DockerServer``.

Nothing here closes a connection: live ones (hijacked attach and exec among them)
carry on under the settings they started with.

* ``max-clients``, ``max-header-bytes``, ``request-timeout``, ``keepalive``: at
  once, for the connections accepted from then on;
* ``socket-mode``, ``socket-owner``, ``socket-group`` with the same ``socket``: the
  socket file changes in place (chmod, chown);
* a new ``socket`` path, or ``[docker.tcp]`` at another address: the new listener
  is opened first, then the old one stops accepting and closes (its path goes);
* ``[docker.tcp.tls]`` alone: the certificates are loaded and the same listeners
  accept with them from then on;
* ``enabled``: only at restart (logged).

What cannot be applied (a listener that cannot be opened, certificates that do
not load, a chown refused) is logged and the old setting kept; ``reconfigure``
returns the config in force.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import replace

import trio

from common.ops.config import ConfigError
from vspc.docker.http import Limits
from vspc.docker.server import DockerServer, _tls_context
from vspc.docker_config import DockerConfig

log = logging.getLogger("vspc.docker")


async def reconfigure(server: DockerServer, new: DockerConfig) -> DockerConfig:
    """See the module doc."""
    old = server.config
    if new.enabled != old.enabled:
        log.warning("reload: docker.enabled changes only at restart")
        new = replace(new, enabled=old.enabled)
    if server.accepting:
        new = await _unix(server, old, new)
        new = await _tcp(server, old, new)
    server.config = new
    server.limits = Limits(
        max_header_bytes=new.max_header_bytes, request_timeout=new.request_timeout
    )
    if new != old:
        log.info("reload: [docker] applied (%d connections carry on)", server.clients)
    return new


def _keep_unix(new: DockerConfig, old: DockerConfig) -> DockerConfig:
    return replace(
        new,
        socket=old.socket,
        socket_mode=old.socket_mode,
        socket_owner=old.socket_owner,
        socket_group=old.socket_group,
    )


async def _unix(server: DockerServer, old: DockerConfig, new: DockerConfig) -> DockerConfig:
    current = next((s for s in server.listeners if s.unix), None)
    if new.socket == old.socket:
        if current is None or new.socket is None:
            return new
        if (new.socket_mode, new.owner_ids()) == (old.socket_mode, old.owner_ids()):
            return new
        try:
            os.chmod(new.socket, new.socket_mode)
            os.chown(new.socket, *new.owner_ids())
        except OSError as e:
            log.error("reload: docker.socket %s: %s; keeping its mode and owner", new.socket, e)
            with contextlib.suppress(OSError):
                os.chmod(new.socket, old.socket_mode)
            return _keep_unix(new, old)
        return new
    if new.socket is not None:
        try:
            lst = await server.open_unix(new)
        except ConfigError as e:
            log.error("reload: %s; keeping the old Docker socket", e)
            if old.socket is not None:
                server.unix_path = old.socket
            return _keep_unix(new, old)
        server.start_accepting(lst, None)
    else:
        server.unix_path = None
    if current is not None:
        server.stop_accepting(current)
        await trio.aclose_forcefully(current.listener)
    return new


async def _tcp(server: DockerServer, old: DockerConfig, new: DockerConfig) -> DockerConfig:
    if new.tcp == old.tcp:
        return new
    try:
        ctx = _tls_context(new)
    except ConfigError as e:
        log.error("reload: %s; keeping the old Docker TCP listener", e)
        return replace(new, tcp=old.tcp)
    current = [s for s in server.listeners if not s.unix]
    if (
        old.tcp is not None
        and new.tcp is not None
        and old.tcp.port
        and ((old.tcp.host, old.tcp.port) == (new.tcp.host, new.tcp.port))
    ):
        for served in current:  # new certificates on the same sockets
            server.stop_accepting(served)
            server.start_accepting(served.listener, ctx)
        return new
    fresh = []
    if new.tcp is not None:
        try:
            fresh = await server.open_tcp(new.tcp)
        except ConfigError as e:
            log.error("reload: %s; keeping the old Docker TCP listener", e)
            return replace(new, tcp=old.tcp)
    else:
        server.tcp_addresses = []
    for served in current:
        server.stop_accepting(served)
        await trio.aclose_forcefully(served.listener)
    for lst in fresh:
        server.start_accepting(lst, ctx)
    return new
