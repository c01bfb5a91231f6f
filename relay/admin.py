"""The relay's admin socket: one JSON request per line, one JSON reply per line.

A Unix socket (mode 0600: whoever can use it can re-route streams). Commands are
plain functions registered by name; the relay daemon registers at least the
route commands of ``relay.route_admin``::

    {"cmd": "route.show"}
    {"cmd": "route.set", "route": "appliance", "address": "tcp:10.0.0.2:7443",
     "identity": "vic://host/esx-02", "tls": true, "persist": false}
    {"cmd": "route.reset", "route": "appliance"}

Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. A bad
request costs its own connection a one-line error and nothing else.

``vic relay route set|show`` is ``add_route_cli(subparsers)`` + ``run_route_cli(args)``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from common.io.unixlisten import open_unix_listener
from common.link.route import RouteError
from common.ops.wiretext import wire

log = logging.getLogger("relay.admin")

MAX_REQUEST = 64 * 1024
Handler = Callable[[dict[str, Any]], "dict[str, Any] | Awaitable[dict[str, Any]]"]


class AdminError(Exception):
    """A request the admin socket refuses; the message goes back to the client."""


class AdminServer:
    def __init__(
        self, path: str | Path, commands: Mapping[str, Handler], *, request_timeout: float = 10.0
    ) -> None:
        self.path = Path(path)
        self.commands = dict(commands)
        self.request_timeout = request_timeout

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen (mode 0600, replacing a stale socket) and serve until cancelled."""
        listener = await open_unix_listener(self.path, mode=0o600, backlog=16)
        try:
            await trio.serve_listeners(self._handle, [listener], task_status=task_status)
        finally:
            listener.close()

    async def _handle(self, stream: trio.abc.Stream) -> None:
        try:
            with trio.move_on_after(self.request_timeout):
                buf = bytearray()
                while b"\n" not in buf:
                    data = await stream.receive_some(4096)
                    if not data:
                        break
                    buf += data
                    if len(buf) > MAX_REQUEST:
                        await self._reply(stream, {"ok": False, "error": "request too long"})
                        return
                line = bytes(buf).split(b"\n", 1)[0]
                reply = await self.dispatch(line)
                await self._reply(stream, reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return {"ok": False, "error": f"not JSON: {e}"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": 'request must be an object with a "cmd" string'}
        fn = self.commands.get(req["cmd"])
        if fn is None:
            return {
                "ok": False,
                "error": f"unknown command {req['cmd']!r}",
                "commands": sorted(self.commands),
            }
        try:
            res = fn(req)
            if inspect.isawaitable(res):
                res = await res
        except (AdminError, RouteError, ValueError, KeyError) as e:
            log.info("admin %s refused: %s", wire(str(req["cmd"])), wire(str(e)))
            return {"ok": False, "error": str(e)}
        log.info("admin %s: ok", wire(str(req["cmd"])))
        return {"ok": True, **res}

    @staticmethod
    async def _reply(stream: trio.abc.Stream, obj: dict[str, Any]) -> None:
        await stream.send_all(json.dumps(obj).encode() + b"\n")


# ------------------------------------------------------------------ client
async def admin_request(
    path: str | Path, req: Mapping[str, Any], timeout: float = 10.0
) -> dict[str, Any]:
    with trio.fail_after(timeout):
        stream = await trio.open_unix_socket(str(path))
        async with stream:
            await stream.send_all(json.dumps(dict(req)).encode() + b"\n")
            buf = bytearray()
            while b"\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    break
                buf += data
    return dict(json.loads(bytes(buf)))


def admin_request_sync(
    path: str | Path, req: Mapping[str, Any], timeout: float = 10.0
) -> dict[str, Any]:
    """Blocking client for the CLI."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(dict(req)).encode() + b"\n")
        buf = bytearray()
        while b"\n" not in buf:
            data = s.recv(65536)
            if not data:
                break
            buf += data
    return dict(json.loads(bytes(buf)))


def add_route_cli(sub: Any, default_socket: str = "/run/vic/relay.sock") -> None:
    """Add ``route show`` / ``route set`` to a ``vic relay`` subparsers object."""
    p = sub.add_parser("route", help="show or change routes of a running relay")
    rs = p.add_subparsers(dest="route_command", metavar="ACTION")
    rs.required = True
    show = rs.add_parser("show", help="routes, their links and streams")
    show.add_argument("--admin-socket", default=default_socket, help="relay admin socket")
    s = rs.add_parser("set", help="override a route (live streams follow and resume)")
    s.add_argument("--admin-socket", default=default_socket, help="relay admin socket")
    s.add_argument("route", nargs="?", help="route name (optional if there is only one)")
    s.add_argument("--address", required=True, help="tcp:HOST:PORT | unix:PATH | vsock:CID:PORT")
    s.add_argument(
        "--identity", help="expected peer identity, vic://host/NAME or vic://appliance/NAME"
    )
    s.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS (only for a trusted transport such as vsock on one host)",
    )
    s.add_argument("--persist", action="store_true", help="write it into the config file too")
    r = rs.add_parser("reset", help="drop a route's override: the config file's route again")
    r.add_argument("--admin-socket", default=default_socket, help="relay admin socket")
    r.add_argument("route", nargs="?", help="route name (optional if there is only one)")


def run_route_cli(args: argparse.Namespace) -> int:
    if args.route_command == "show":
        req: dict[str, Any] = {"cmd": "route.show"}
    elif args.route_command == "reset":
        req = {"cmd": "route.reset"}
    else:
        req = {"cmd": "route.set", "address": args.address, "tls": not args.plaintext}
        if args.identity:
            req["identity"] = args.identity
        if args.persist:
            req["persist"] = True
    if args.route_command != "show" and args.route:
        req["route"] = args.route
    reply = request_or_say(args.admin_socket, req)
    if reply is None:
        return 1
    print(json.dumps(reply, indent=2))
    return 0


def request_or_say(path: str, req: dict[str, Any]) -> dict[str, Any] | None:
    """The admin socket's reply (without ``ok``), or None after one line on stderr."""
    try:
        reply = admin_request_sync(path, req)
    except OSError as e:
        print(f"vic relay route: cannot reach {path}: {e.strerror or e}", file=sys.stderr)
        return None
    if not reply.get("ok"):
        print(f"vic relay route: {reply.get('error')}", file=sys.stderr)
        return None
    reply.pop("ok", None)
    return reply
