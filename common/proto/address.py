"""The one address grammar of links, listeners and routes (sans-IO).

``tcp:HOST:PORT`` (an IPv6 host may be bracketed), ``unix:/path``,
``vsock:CID:PORT``; a forwarding listener also takes ``hvsock:/path:PORT`` (an
appliance VM under Firecracker or Cloud Hypervisor, host-initiated ``CONNECT``).
A transport is trusted (needs no TLS) when it is a Unix socket, vsock, or TCP on
a loopback address.
"""

from __future__ import annotations

import ipaddress
from typing import Any

__all__ = [
    "AddressError",
    "is_loopback_host",
    "is_trusted_address",
    "parse_address",
    "parse_forward",
]


class AddressError(ValueError):
    """An address outside the grammar (the message quotes it and shows the form)."""


def parse_address(address: str) -> tuple[str, Any]:
    """(kind, where): ``("tcp", (host, port))``, ``("unix", path)`` or
    ``("vsock", (cid, port))``; raises AddressError."""
    kind, _, rest = address.partition(":")
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise AddressError(f"bad tcp address {address!r} (tcp:HOST:PORT)")
        return "tcp", (host, int(port))
    if kind == "unix":
        if not rest:
            raise AddressError(f"bad unix address {address!r} (unix:/path)")
        return "unix", rest
    if kind == "vsock":
        cid, _, port = rest.partition(":")
        if not cid.isdigit() or not port.isdigit():
            raise AddressError(f"bad vsock address {address!r} (vsock:CID:PORT)")
        return "vsock", (int(cid), int(port))
    raise AddressError(f"unknown address kind in {address!r} (tcp:, unix:, vsock:)")


def parse_forward(address: str) -> tuple[str, object]:
    """Where a forwarding listener passes links: an address as above, or
    ``hvsock:/path/to/vm.vsock:PORT`` -> ``("hvsock", (path, port))``."""
    if address.startswith("hvsock:"):
        path, _, port = address[len("hvsock:") :].rpartition(":")
        if not path or not port.isdigit():
            raise AddressError(f"bad hvsock address {address!r} (hvsock:/path:PORT)")
        return "hvsock", (path, int(port))
    return parse_address(address)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1): a
    listener there is reachable from this machine only. Any other name is not
    (it would have to be resolved, and could resolve elsewhere)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_trusted_address(address: str) -> bool:
    """A transport that needs no TLS: a Unix socket, vsock (inside one host), or
    TCP on a loopback address. ``address`` must parse (``parse_address``)."""
    kind, where = parse_address(address)
    return kind != "tcp" or is_loopback_host(where[0])
