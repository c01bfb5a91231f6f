"""Follow the appliance VM through vSphere: re-route when its ``runtime.host`` changes.

Where relays can reach vCenter, the route to the appliance follows vSphere
itself rather than a membership protocol of ours: a property collector filter
on the appliance VM's ``runtime.host``, polled with ``WaitForUpdatesEx``; when
the VM moves (vMotion, HA restart) the new host's name is looked up in the
configured ``host -> Route`` map and ``Router.set_route`` moves every live
stream to the relay on that host, where they resume.

The vSphere client is ``common.io.vsphere`` (its calls run in a worker thread);
waits are bounded (``max_wait`` seconds) so cancellation is prompt. A lost vCenter connection is
retried with backoff and never disturbs the current route.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import trio

from common.io.vsphere import PropertyWatch, VSphereConn, VSphereTarget
from common.link.route import Route, Router
from common.proto.identity import uuid_key

log = logging.getLogger("relay.vsphere_route")


class HostWatch:
    """Blocking watcher of one VM's ``runtime.host`` (call ``wait`` through ``conn.call``).

    The VM is found by name, or by a VC UUID in the identity grammar (a name is
    compared exactly, never folded)."""

    def __init__(self, vc: VSphereTarget, vm: str, max_wait: int = 10) -> None:
        self.conn = VSphereConn(vc)
        self.props = PropertyWatch(self.conn, vm, ["runtime.host"], max_wait, uuid_key)
        self.host: str | None = None

    def wait(self) -> str | None:
        """One WaitForUpdatesEx round; the VM's host name if it was reported."""
        if not self.props.ready:
            self.props.setup()
        for name, _, val in self.props.wait() or []:
            if name == "runtime.host" and val is not None:
                self.host = str(val.name)
        return self.host

    def close(self) -> None:
        self.props.close()


async def follow_appliance(
    router: Router,
    vc: VSphereTarget,
    vm: str,
    routes: Mapping[str, Route],
    *,
    max_wait: int = 10,
    backoff: tuple[float, float] = (0.5, 30.0),
    on_change: Callable[[str, Route], None] | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep ``router`` pointed at the relay on the host that runs ``vm``. Runs until cancelled.

    ``routes`` maps ESX host names (``HostSystem.name``) to the route for that host.
    ``task_status.started()`` fires after the first answer from vCenter.
    """
    watch = HostWatch(vc, vm, max_wait)
    delay = backoff[0]
    started = False
    current: str | None = None
    try:
        while True:
            try:
                host = await watch.conn.call(watch.wait)
            except Exception as e:
                log.warning("vSphere watch of %s: %s; retrying in %.1fs", vm, e, delay)
                await trio.to_thread.run_sync(watch.close, abandon_on_cancel=True)
                await trio.sleep(delay)
                delay = min(delay * 2, backoff[1])
                continue
            delay = backoff[0]
            if host is not None and host != current:
                current = host
                route = routes.get(host)
                if route is None:
                    log.warning(
                        "appliance %s is on host %s, which has no configured route; keeping %s",
                        vm,
                        host,
                        router.route.address,
                    )
                elif route != router.route:
                    log.info("appliance %s moved to host %s: route -> %s", vm, host, route.address)
                    router.set_route(route)
                    if on_change is not None:
                        on_change(host, route)
            if not started:
                started = True
                task_status.started(current)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await trio.to_thread.run_sync(watch.close, abandon_on_cancel=True)
