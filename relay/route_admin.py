"""The admin socket's route commands: ``route.show``, ``route.set``, ``route.reset``.

``route.set`` makes an override (``relay.route_state``): live streams move to the
new route at once and resume there; the file is untouched unless the request
says ``"persist": true``, which writes the route into the TOML file (and so is no
override). ``route.reset`` goes back to the file's route. ``route.show`` gives,
per route, the route in force, its ``source`` and ``why``, the file's route
beside it, its link, whether it is reachable (``up``) and its counters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from common.link.route import Route, Router
from relay.admin import AdminError, Handler
from relay.route_state import RouteState


def route_from_request(req: Mapping[str, Any], current: Route | None = None) -> Route:
    address = req.get("address")
    if not isinstance(address, str):
        raise AdminError('route.set needs "address" (tcp:HOST:PORT, unix:PATH, vsock:CID:PORT)')
    tls = req.get("tls", current.tls if current is not None else True)
    identity = req.get("identity", current.identity if current is not None and tls else "")
    if not isinstance(tls, bool) or not isinstance(identity, str):
        raise AdminError('"tls" must be true/false and "identity" a string')
    name = current.name if current is not None else str(req.get("route", ""))
    return Route(address=address, identity=identity, tls=tls, name=name)


def _show_one(name: str, r: Router, state: RouteState) -> dict[str, Any]:
    link = r.link
    return {
        **r.route.describe(),
        **state.describe(name, r.route),
        "up": r.health.up,
        "connect_failures": r.health.failures,
        "streams": len(r.streams),
        "link": None
        if link is None
        else {
            "peer": link.peer_identity,
            "alive": link.alive,
            "rtt_ms": None if link.rtt is None else round(link.rtt * 1000, 3),
            "streams": link.stream_count,
        },
        "links_opened": r.links_opened,
        "route_changes": r.route_changes,
    }


class _Commands:
    def __init__(
        self,
        routers: Callable[[], Mapping[str, Router]],
        on_change: Callable[[str, Route], None] | None,
        state: RouteState,
    ) -> None:
        self.routers, self.on_change, self.st = routers, on_change, state

    def table(self) -> Mapping[str, Router]:
        table = self.routers()
        for name, r in table.items():
            self.st.file_routes.setdefault(name, r.route)
        return table

    def pick(self, req: dict[str, Any]) -> tuple[str, Router]:
        table = self.table()
        name = req.get("route")
        if name is None and len(table) == 1:
            name = next(iter(table))
        if not isinstance(name, str) or name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise AdminError(f"unknown route {name!r} (known: {known})")
        return name, table[name]

    def move(self, name: str, router: Router, route: Route) -> int:
        moved = len(router.streams) if route != router.route else 0
        router.set_route(route)
        if self.on_change is not None:
            self.on_change(name, route)
        return moved

    def show(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"routes": {n: _show_one(n, r, self.st) for n, r in self.table().items()}}

    def set_(self, req: dict[str, Any]) -> dict[str, Any]:
        name, router = self.pick(req)
        route = route_from_request(req, router.route)
        persist = req.get("persist", False)
        if not isinstance(persist, bool):
            raise AdminError('"persist" must be true/false')
        if persist:
            self.st.persist(name, route)  # refused (file unchanged) before anything moves
        else:
            self.st.override(name, route)
        moved = self.move(name, router, route)
        src, why = self.st.source(name, route)
        return {
            "route": name,
            **route.describe(),
            "source": src,
            "why": why,
            "streams_moved": moved,
        }

    def reset(self, req: dict[str, Any]) -> dict[str, Any]:
        name, router = self.pick(req)
        route = self.st.reset(name)
        moved = self.move(name, router, route)
        return {"route": name, **route.describe(), "source": "file", "streams_moved": moved}


def route_commands(
    routers: Callable[[], Mapping[str, Router]],
    on_change: Callable[[str, Route], None] | None = None,
    state: RouteState | None = None,
) -> dict[str, Handler]:
    """The route commands over the daemon's routers (looked up per request). Without
    a ``state`` the routes first seen are taken as the file's, kept in memory only."""
    c = _Commands(routers, on_change, state if state is not None else RouteState())
    return {"route.show": c.show, "route.set": c.set_, "route.reset": c.reset}
