"""Which route is in force, and why: the config file's or an operator's override.

``vic relay route set`` does not edit the config file: it makes an **override**,
held in memory and in a small JSON state file (``[peer] route-state``, by default
next to the admin socket: ``relay.sock.routes.json``), so that it outlives a
restart of the relay (and a handoff to the next process). ``route show`` names
the route in force, its source (``file``, ``override`` or ``vsphere``) and the
file's value beside it. An override ends when

* ``route set --persist`` writes it into the TOML file (then the file says it),
* ``route reset`` drops it (the file's route is back in force),
* the file is reloaded (SIGHUP): the file is what the operator last said, so its
  routes are restored and every override is dropped (one WARNING line each),
* the relay starts and finds the file's route changed since the override was
  made (the override was made against a value that is gone).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.link.route import Route
from relay.route_toml import write_route

log = logging.getLogger("relay.route")

STATE_VERSION = 1


@dataclass(frozen=True)
class Override:
    route: Route
    file_route: Route  # what the file said when the override was made
    since: float  # unix time

    def to_json(self) -> dict[str, Any]:
        return {
            "route": self.route.describe(),
            "file": self.file_route.describe(),
            "since": self.since,
        }

    @staticmethod
    def from_json(name: str, obj: Any) -> Override:
        def route(d: Any) -> Route:
            return Route(str(d["address"]), str(d.get("identity", "")), bool(d["tls"]), name)

        return Override(route(obj["route"]), route(obj["file"]), float(obj["since"]))


def default_state_path(admin_socket: Path | None) -> Path | None:
    return (
        None if admin_socket is None else admin_socket.with_name(admin_socket.name + ".routes.json")
    )


class RouteState:
    """The file's routes and the overrides on top of them (one per route at most)."""

    def __init__(self, state_path: Path | None = None, config_path: Path | None = None) -> None:
        self.state_path = state_path
        self.config_path = config_path
        self.file_routes: dict[str, Route] = {}
        self.overrides: dict[str, Override] = {}

    # --- the file -------------------------------------------------------------------

    def start(self, file_routes: dict[str, Route]) -> dict[str, Route]:
        """Start-up: the routes to run, the file's with the saved overrides that still
        apply on top."""
        self.file_routes = dict(file_routes)
        saved = self._load()
        for name, ov in saved.items():
            if file_routes.get(name) != ov.file_route:
                log.warning(
                    "route %s: saved override to %s dropped: the file's route changed since",
                    name,
                    ov.route.address,
                )
                continue
            self.overrides[name] = ov
            log.warning(
                "route %s: override in force: %s (the file says %s; `vic relay route reset` "
                "to go back, `route set --persist` to keep it)",
                name,
                ov.route.address,
                ov.file_route.address,
            )
        if len(self.overrides) != len(saved):
            self._save()
        return {**file_routes, **{n: ov.route for n, ov in self.overrides.items()}}

    def reload(self, file_routes: dict[str, Route]) -> None:
        """SIGHUP: the file wins; every override is dropped."""
        self.file_routes = dict(file_routes)
        for name, ov in sorted(self.overrides.items()):
            log.warning(
                "route %s: reload restores the file's route %s (override to %s dropped)",
                name,
                file_routes[name].address if name in file_routes else "(route removed)",
                ov.route.address,
            )
        if self.overrides:
            self.overrides.clear()
            self._save()

    # --- the operator -----------------------------------------------------------------

    def override(self, name: str, route: Route) -> None:
        file_route = self.file_routes[name]
        if route == file_route:
            self.overrides.pop(name, None)
        else:
            self.overrides[name] = Override(route, file_route, time.time())
        self._save()

    def reset(self, name: str) -> Route:
        """Drop the override of ``name``; returns the file's route."""
        self.overrides.pop(name, None)
        self._save()
        return self.file_routes[name]

    def persist(self, name: str, route: Route) -> None:
        """Write ``route`` into the config file; it becomes the file's route."""
        if self.config_path is None:
            raise ValueError("this relay runs without a config file: nothing to persist to")
        write_route(self.config_path, name, route)
        self.file_routes[name] = route
        self.overrides.pop(name, None)
        self._save()
        log.warning("route %s: %s written to %s", name, route.address, self.config_path)

    def source(self, name: str, current: Route) -> tuple[str, str]:
        """(``file`` | ``override`` | ``vsphere``, why) for the route in force."""
        ov = self.overrides.get(name)
        if ov is not None and ov.route == current:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ov.since))
            return "override", f"set with `vic relay route set` at {when}; not in the file"
        if current == self.file_routes.get(name):
            return "file", "as the config file says"
        return "vsphere", "following the appliance VM ([peer.follow])"

    def describe(self, name: str, current: Route) -> dict[str, Any]:
        src, why = self.source(name, current)
        file_route = self.file_routes.get(name)
        return {
            "source": src,
            "why": why,
            "file": None if file_route is None else file_route.describe(),
        }

    # --- the state file -------------------------------------------------------------

    def _load(self) -> dict[str, Override]:
        if self.state_path is None:
            return {}
        try:
            doc = json.loads(self.state_path.read_text())
            return {name: Override.from_json(name, obj) for name, obj in doc["overrides"].items()}
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("route state %s unreadable, ignored: %s", self.state_path, e)
            return {}

    def _save(self) -> None:
        if self.state_path is None:
            return
        if not self.overrides:
            try:
                self.state_path.unlink(missing_ok=True)
            except OSError as e:
                log.warning("route state %s not removed: %s", self.state_path, e)
            return
        doc = {
            "version": STATE_VERSION,
            "overrides": {n: ov.to_json() for n, ov in sorted(self.overrides.items())},
        }
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, self.state_path)
        except OSError as e:  # the override still holds in memory
            log.warning("route state %s not saved: %s", self.state_path, e)
