"""Assigned addresses from the kernel: netlink notifications, pyroute2 dumps.

A raw ``NETLINK_ROUTE`` socket subscribed to link and IPv4/IPv6 address groups
wakes the watcher on every change (DHCP lease, renew with a new address, address
removed, link down); each wake-up re-reads all addresses with pyroute2 and hands
the per-interface view to a callback, which the publisher turns into guestinfo.
Loopback, link-local IPv6 (unless asked) and tentative/failed-DAD addresses are
left out.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import trio

from common.ops.wiretext import wire
from common.proto import guestinfo as gi

log = logging.getLogger(__name__)

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
RT_SCOPE_HOST = 254
RT_SCOPE_LINK = 253

Addresses = dict[str, list[gi.IPAddress]]


def dump_addresses(
    *,
    exclude: Iterable[str] = ("lo",),
    names: Mapping[str, str] | None = None,
    include_link_local: bool = False,
) -> Addresses:
    """Current addresses per (published) interface name, via pyroute2."""
    from pyroute2 import IPRoute

    skip = set(exclude)
    names = names or {}
    out: Addresses = {}
    with IPRoute() as ipr:
        links = {ln["index"]: ln.get_attr("IFLA_IFNAME") for ln in ipr.get_links()}
        for a in ipr.get_addr():
            ifname = links.get(a["index"])
            if ifname is None or ifname in skip:
                continue
            if a["scope"] == RT_SCOPE_HOST:
                continue
            if a["scope"] == RT_SCOPE_LINK and not include_link_local:
                continue
            flags = a.get_attr("IFA_FLAGS") or a["flags"]
            if flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
                continue
            raw = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            if raw is None:
                continue
            addr = ipaddress.ip_address(raw)
            net = names.get(ifname, ifname)
            try:
                gi.check_name(net, "network")
            except gi.GuestinfoError:
                log.warning("interface %s: name not publishable; skipped", wire(net))
                continue
            out.setdefault(net, []).append(addr)
    for v in out.values():
        v.sort(key=lambda x: (x.version, x.packed))
    return out


class NetWatcher:
    def __init__(
        self,
        on_change: Callable[[Addresses], Awaitable[Any]],
        *,
        exclude: Iterable[str] = ("lo",),
        names: Mapping[str, str] | None = None,
        include_link_local: bool = False,
    ) -> None:
        self.on_change = on_change
        self.exclude = tuple(exclude)
        self.names = dict(names or {})
        self.include_link_local = include_link_local
        self.current: Addresses | None = None
        self.dumps = 0

    async def _dump(self) -> Addresses:
        self.dumps += 1
        return await trio.to_thread.run_sync(
            lambda: dump_addresses(
                exclude=self.exclude, names=self.names, include_link_local=self.include_link_local
            )
        )

    async def _refresh(self) -> None:
        cur = await self._dump()
        if cur != self.current:
            self.current = cur
            await self.on_change(cur)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        sock.setblocking(False)
        try:
            sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
            await self._refresh()
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(sock)
                while True:  # drain: one dump covers all queued notifications
                    try:
                        if not sock.recv(65536):
                            break
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno != errno.ENOBUFS:  # overflow: the dump below resyncs
                            raise
                await self._refresh()
        finally:
            sock.close()
