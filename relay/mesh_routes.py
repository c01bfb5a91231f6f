"""The mesh's routes: one ``Router`` per ``[peer.routes.NAME]``, which route is in
force (``relay.route_state``), whether it is reachable, and who may change it.

* start: the file's routes, with the overrides saved in the route state file on top;
* reload (SIGHUP): the file's routes are restored, overrides dropped (logged);
* admin socket (``relay.route_admin``): ``route.set`` (an override, or written to
  the file with ``persist``), ``route.reset``, ``route.show``;
* ``[peer.follow.NAME]``: vCenter says where the appliance runs (``relay.vsphere_route``).

Metrics: ``relay_route_up{route}`` (0 while the last connect attempt failed),
``relay_route_connect_failures_total{route}``, ``relay_route_changes_total{route,cause}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from common.link.config import PeerConfig
from common.link.events import LinkEvents
from common.link.peerlink import LinkConfig
from common.link.route import Router
from common.link.route_health import RouteHealth
from common.ops.reconcile import diff
from relay.admin import AdminServer
from relay.route_admin import route_commands
from relay.route_state import RouteState, default_state_path
from relay.vsphere_route import follow_appliance

log = logging.getLogger("relay.mesh")


class MeshRoutes:
    def __init__(self, registry: CollectorRegistry, events: LinkEvents) -> None:
        self.events = events
        self.routers: dict[str, Router] = {}
        self.state = RouteState()
        self.config_path: Path | None = None  # the relay's TOML (route set --persist)
        self._started = False
        self.route_changes = Counter(
            "relay_route_changes", "route changes by cause", ["route", "cause"], registry=registry
        )
        self.route_up = Gauge(
            "relay_route_up",
            "1 unless the last attempt to connect the route failed",
            ["route"],
            registry=registry,
        )
        self.connect_failures = Counter(
            "relay_route_connect_failures",
            "failed attempts to connect a route (connect, TLS, identity)",
            ["route"],
            registry=registry,
        )

    def apply(
        self,
        nursery: trio.Nursery,
        old: PeerConfig,
        new: PeerConfig,
        files: Any,
        link_config: LinkConfig,
        tls_changed: bool,
    ) -> None:
        """Converge on ``new`` (``tls_changed``: TLS paths or file contents changed).
        Routers are never restarted: a route that is not the
        file's (changed file, or an override dropped by this reload) re-points its
        router; a followed route ([peer.follow]) is re-pointed only if the file changed."""
        file_routes = new.routes_runtime()
        overridden: set[str] = set()
        if not self._started:
            self._started = True
            self.state.state_path = new.route_state or default_state_path(new.admin_socket)
            self.state.config_path = self.config_path
            wanted = self.state.start(file_routes)
        else:
            overridden = set(self.state.overrides)
            self.state.reload(file_routes)
            wanted = file_routes
        plan = diff({n: r.route for n, r in self.routers.items()}, wanted, same=lambda *_: True)
        for name in plan.keep:
            r = self.routers[name]
            if tls_changed:
                r.set_tls(files)
            file_changed = old.routes.get(name) != new.routes[name]
            if wanted[name] != r.route and (file_changed or name in overridden):
                self.route_changes.labels(name, "reload").inc()
                r.set_route(wanted[name])
        for name, route in plan.start:
            self.routers[name] = self._router(name, route, nursery, files, link_config)
        for name in plan.stop:
            log.info("route %s removed; its streams keep their link until they end", name)
            self.routers.pop(name)
            self.route_up.remove(name)

    def _router(
        self, name: str, route: Any, nursery: trio.Nursery, files: Any, link_config: LinkConfig
    ) -> Router:
        health = RouteHealth(name, on_failure=self.connect_failures.labels(name).inc)
        self.route_up.labels(name).set_function(lambda: 1.0 if health.up else 0.0)
        return Router(
            route,
            nursery,
            tls_files=files,
            config=link_config,
            name=name,
            events=self.events,
            health=health,
        )

    async def serve_admin(self, path: Any, scope: trio.CancelScope, *, task_status: Any) -> None:
        with scope:
            server = AdminServer(
                path,
                route_commands(
                    lambda: self.routers,
                    on_change=lambda name, _r: self.route_changes.labels(name, "admin").inc(),
                    state=self.state,
                ),
            )
            await server.serve(task_status=task_status)

    async def follow(self, name: str, fcfg: Any, scope: trio.CancelScope) -> None:
        with scope:
            router = self.routers[name]
            try:
                await follow_appliance(
                    router,
                    fcfg.vcenter_target(),
                    fcfg.vm,
                    fcfg.routes(name),
                    on_change=lambda _h, _r: self.route_changes.labels(name, "vsphere").inc(),
                )
            except Exception as e:  # the daemon carries on with the route it has
                log.error("following appliance %s for route %s stopped: %s", fcfg.vm, name, e)
