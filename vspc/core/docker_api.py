"""The Docker Engine API's request side, sans-IO: versions, routes, errors (issue 14).

``route(method, target)`` takes an HTTP request line's method and target and
gives a ``Route``: which verb (``Verb``), the container or exec reference in
the path, the query, the API version the client asked for. What the endpoint
does not serve is ``Verb.UNSUPPORTED`` (answered with ``NOT_CREATING``),
inspection of other object kinds (images, networks, volumes...) is
``Verb.NO_SUCH_OBJECT`` (404, so ``docker inspect NAME`` of an unknown name
says "No such object" as docker does).

Versions: a path may start ``/v<major>.<minor>``; without it the server's
own ``API_VERSION`` applies. A version above ``API_VERSION`` or below
``MIN_API_VERSION`` is ``DockerError(400)`` with docker's wording. Clients
negotiate from ``/_ping``'s ``API-Version`` header (the lower of theirs and
ours).

``DockerError`` carries the HTTP status and the message; ``error_body`` is
docker's error shape, ``{"message": "..."}``.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

API_VERSION = "1.45"
MIN_API_VERSION = "1.24"
MAX_TARGET = 8192  # bytes of request target we look at

NOT_CREATING = (
    "this endpoint does not create containers: it serves ps, inspect, logs, wait, "
    "kill, stop, top, exec and attach on the containerVMs the appliance knows"
)


class DockerError(Exception):
    """An answer in docker's error shape: ``status`` and one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())


def error_body(message: str) -> bytes:
    return json.dumps({"message": message}).encode()


class Verb(enum.Enum):
    PING = "ping"
    VERSION = "version"
    INFO = "info"
    PS = "ps"
    INSPECT = "inspect"
    LOGS = "logs"
    WAIT = "wait"
    KILL = "kill"
    STOP = "stop"
    TOP = "top"
    EXEC_CREATE = "exec_create"
    EXEC_START = "exec_start"
    EXEC_RESIZE = "exec_resize"
    EXEC_INSPECT = "exec_inspect"
    ATTACH = "attach"
    RESIZE = "resize"
    NO_SUCH_OBJECT = "no_such_object"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Route:
    verb: Verb
    version: tuple[int, int]
    ref: str = ""  # the container (or exec id) named in the path
    query: Mapping[str, list[str]] = field(default_factory=dict)
    path: str = ""  # without the version prefix

    def arg(self, name: str, default: str = "") -> str:
        """The last value of query parameter ``name``."""
        vals = self.query.get(name)
        return vals[-1] if vals else default


_ID = r"([^/]+)"
_OTHER_KINDS = r"(?:images|networks|volumes|plugins|nodes|services|tasks|secrets|configs)"
# (method, path pattern without the version prefix, verb)
_ROUTES: tuple[tuple[str, re.Pattern[str], Verb], ...] = tuple(
    (m, re.compile(p), v)
    for m, p, v in (
        ("GET", r"/_ping", Verb.PING),
        ("HEAD", r"/_ping", Verb.PING),
        ("GET", r"/version", Verb.VERSION),
        ("GET", r"/info", Verb.INFO),
        ("GET", r"/containers/json", Verb.PS),
        ("GET", rf"/containers/{_ID}/json", Verb.INSPECT),
        ("GET", rf"/containers/{_ID}/logs", Verb.LOGS),
        ("GET", rf"/containers/{_ID}/top", Verb.TOP),
        ("POST", rf"/containers/{_ID}/wait", Verb.WAIT),
        ("POST", rf"/containers/{_ID}/kill", Verb.KILL),
        ("POST", rf"/containers/{_ID}/stop", Verb.STOP),
        ("POST", rf"/containers/{_ID}/attach", Verb.ATTACH),
        ("POST", rf"/containers/{_ID}/resize", Verb.RESIZE),
        ("POST", rf"/containers/{_ID}/exec", Verb.EXEC_CREATE),
        ("POST", rf"/exec/{_ID}/start", Verb.EXEC_START),
        ("POST", rf"/exec/{_ID}/resize", Verb.EXEC_RESIZE),
        ("GET", rf"/exec/{_ID}/json", Verb.EXEC_INSPECT),
        ("GET", rf"/{_OTHER_KINDS}/{_ID}(?:/json)?", Verb.NO_SUCH_OBJECT),
    )
)
_VERSION_PREFIX = re.compile(r"/v(\d{1,3})\.(\d{1,3})(/.*)")


def parse_version(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{1,3})\.(\d{1,3})", text)
    if m is None:
        raise DockerError(400, f"invalid API version {text[:40]!r}")
    return int(m[1]), int(m[2])


def _check_version(version: tuple[int, int]) -> None:
    shown = f"{version[0]}.{version[1]}"
    if version > parse_version(API_VERSION):
        raise DockerError(
            400,
            f"client version {shown} is too new. Maximum supported API version is {API_VERSION}",
        )
    if version < parse_version(MIN_API_VERSION):
        raise DockerError(
            400,
            f"client version {shown} is too old. "
            f"Minimum supported API version is {MIN_API_VERSION}, please upgrade your client "
            "to a newer version",
        )


def split_version(path: str) -> tuple[tuple[int, int], str]:
    """(version, the rest of the path); the server's own version when there is no prefix."""
    m = _VERSION_PREFIX.fullmatch(path)
    if m is None:
        return parse_version(API_VERSION), path
    version = (int(m[1]), int(m[2]))
    _check_version(version)
    return version, m[3]


def route(method: str, target: str) -> Route:
    """See the module doc. Raises ``DockerError`` for a target it cannot read."""
    if len(target) > MAX_TARGET:
        raise DockerError(414, "request target too long")
    parts = urlsplit(target)
    if not parts.path.startswith("/"):
        raise DockerError(400, "request target must be an absolute path")
    version, path = split_version(unquote(parts.path))
    query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=64)
    for m, pattern, verb in _ROUTES:
        found = pattern.fullmatch(path)
        if found is not None and m == method:
            ref = found[1] if pattern.groups else ""
            return Route(verb, version, ref, query, path)
    return Route(Verb.UNSUPPORTED, version, "", query, path)


def unsupported_message(method: str, path: str) -> str:
    shown = path if len(path) <= 80 else path[:77] + "..."
    return f"vic-channel: {NOT_CREATING} ({method} {shown} is not supported)"


_TRUE = frozenset({"1", "true", "True", "TRUE", "yes"})
_FALSE = frozenset({"", "0", "false", "False", "FALSE", "no"})


def query_bool(r: Route, name: str, default: bool = False) -> bool:
    """Docker's boolean query values: 1/true/True... true, 0/false/empty false."""
    if name not in r.query:
        return default
    v = r.arg(name)
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise DockerError(400, f"invalid value for {name}: {v[:40]!r}")


def query_int(r: Route, name: str, default: int) -> int:
    v = r.arg(name)
    if v == "":
        return default
    if not re.fullmatch(r"-?\d{1,12}", v):
        raise DockerError(400, f"invalid value for {name}: {v[:40]!r}")
    return int(v)
