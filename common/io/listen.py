"""Listeners that cannot be opened are configuration errors naming their key.

Every daemon opens its listeners (TCP, Unix, vsock) from the config. When the
kernel says no (the port is in use, the host does not resolve or is not an
address of this machine, the path's directory is missing), the operator gets
one line naming the TOML key to change and exit status 2, never a traceback::

    with listening("endpoint.port", host_key="endpoint.host", where="0.0.0.0:7000"):
        listeners = await trio.open_tcp_listeners(7000, host="0.0.0.0")

``listen_error`` does the mapping for code that catches the error elsewhere
(e.g. a listener task reporting its start failure). ``probe_host`` is for
``--check``: it resolves a listener's host and binds port 0 on it, which finds
an unknown or foreign host without touching the configured port.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

from common.ops.config import ConfigError

# errnos that mean "this host is not an address of this machine"
_HOST_ERRNOS = frozenset({errno.EADDRNOTAVAIL})


def _why(e: OSError) -> str:
    text = e.strerror or str(e) or type(e).__name__
    return " ".join(text.split())  # one line, whatever the OS said


def listen_error(
    e: OSError,
    key: str,
    *,
    host_key: str | None = None,
    where: str = "",
    error: type[ConfigError] = ConfigError,
) -> ConfigError:
    """The ConfigError for a listener that could not be opened: a host that does not
    resolve or is not local names ``host_key`` (when given), anything else ``key``."""
    at = f" {where}" if where else ""
    if isinstance(e, socket.gaierror):
        return error(host_key or key, f"cannot resolve{at}: {_why(e)}")
    if e.errno in _HOST_ERRNOS:
        return error(host_key or key, f"cannot listen on{at}: {_why(e)}")
    return error(key, f"cannot listen on{at}: {_why(e)}")


@contextmanager
def listening(
    key: str,
    *,
    host_key: str | None = None,
    where: str = "",
    error: type[ConfigError] = ConfigError,
) -> Iterator[None]:
    """Open a listener inside this block: an OSError becomes ``listen_error(...)``
    (not an ssl.SSLError: a certificate that cannot be loaded is the caller's to name)."""
    try:
        yield
    except (ConfigError, ssl.SSLError):
        raise
    except OSError as e:
        raise listen_error(e, key, host_key=host_key, where=where, error=error) from None


def probe_host(host: str, key: str) -> None:
    """Raise ConfigError(key) unless ``host`` resolves to addresses of this machine."""
    try:
        infos = socket.getaddrinfo(
            host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as e:
        raise listen_error(e, key, where=host) from None
    for family, kind, proto, _name, addr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.bind(addr)
        except OSError as e:
            if e.errno == errno.EAFNOSUPPORT:  # no IPv6 here: trio skips it too
                continue
            raise listen_error(e, key, where=host) from None
