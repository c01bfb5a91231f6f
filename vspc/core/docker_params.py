"""Query parameters of the Docker Engine API, sans-IO: filters, logs, signals.

* ``parse_filters(text)``: the ``filters`` JSON of ``docker ps --filter``, in
  either of docker's shapes (``{"name": {"web": true}}`` or ``{"name":
  ["web"]}``) into ``{key: (values...)}``; unknown keys and bad values are
  ``DockerError(400)``. ``Filters.match`` applies them (values of one key OR,
  keys AND) to what the endpoint knows of a container.
* ``LogsQuery.from_route``: ``docker logs`` parameters (``tail``, ``since``,
  ``follow``, ``timestamps``, ``stdout``, ``stderr``, ``until``).
* ``parse_signal``: ``SIGKILL``, ``KILL``, ``kill`` or ``9``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from vspc.core.docker_api import DockerError, Route, query_bool

MAX_FILTERS_TEXT = 16384
FILTER_KEYS = frozenset({"id", "name", "status", "exited", "label"})
STATUSES = frozenset({"created", "restarting", "running", "removing", "paused", "exited", "dead"})

SIGNALS: dict[str, int] = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7,
    "FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14,
    "TERM": 15, "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21,
    "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28,
    "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
}  # fmt: skip
MAX_SIGNAL = 64


def parse_signal(text: str) -> int:
    """A signal number from docker's spellings; ``DockerError(400)`` otherwise."""
    t = text.strip()
    if re.fullmatch(r"\d{1,3}", t):
        n = int(t)
        if 1 <= n <= MAX_SIGNAL:
            return n
    else:
        name = t.upper().removeprefix("SIG")
        if name in SIGNALS:
            return SIGNALS[name]
        m = re.fullmatch(r"RTMIN\+(\d{1,2})", name)
        if m is not None and 34 + int(m[1]) <= MAX_SIGNAL:
            return 34 + int(m[1])
    raise DockerError(400, f"Invalid signal: {t[:40]}")


def signal_name(signo: int) -> str:
    for name, n in SIGNALS.items():
        if n == signo:
            return f"SIG{name}"
    return str(signo)


@dataclass(frozen=True)
class Candidate:
    """What a filter looks at in one container."""

    id: str
    name: str  # without docker's leading slash
    status: str
    exit_code: int
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Filters:
    by_key: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def values(self, key: str) -> tuple[str, ...]:
        for k, vals in self.by_key:
            if k == key:
                return vals
        return ()

    def __contains__(self, key: str) -> bool:
        return any(k == key for k, _ in self.by_key)

    def match(self, c: Candidate) -> bool:
        return all(any(_one(k, v, c) for v in vals) for k, vals in self.by_key)


def _one(key: str, value: str, c: Candidate) -> bool:
    if key == "id":
        return c.id.startswith(value)
    if key == "name":
        return re.search(value, "/" + c.name) is not None
    if key == "status":
        return c.status == value
    if key == "exited":
        return c.status == "exited" and str(c.exit_code) == value
    if "=" in value:  # label=k=v
        k, v = value.split("=", 1)
        return (k, v) in c.labels
    return any(k == value for k, _ in c.labels)


def _values(key: str, raw: object) -> tuple[str, ...]:
    if isinstance(raw, dict) and all(isinstance(k, str) for k in raw):
        vals = tuple(k for k, on in raw.items() if on is True)
    elif isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        vals = tuple(raw)
    else:
        raise DockerError(400, f"invalid filter value for {key!r}")
    for v in vals:
        _check_value(key, v)
    return vals


def _check_value(key: str, v: str) -> None:
    if key == "status" and v not in STATUSES:
        raise DockerError(400, f"Invalid filter 'status={v[:40]}'")
    if key == "exited" and not re.fullmatch(r"-?\d{1,10}", v):
        raise DockerError(400, f"Invalid filter 'exited={v[:40]}'")
    if key == "name":
        try:
            re.compile(v)
        except re.error as e:
            raise DockerError(400, f"invalid name filter {v[:40]!r}: {e}") from None


def parse_filters(text: str) -> Filters:
    """See the module doc."""
    if text == "":
        return Filters()
    if len(text) > MAX_FILTERS_TEXT:
        raise DockerError(400, "filters too long")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise DockerError(400, "invalid filters: not JSON") from None
    if not isinstance(data, dict):
        raise DockerError(400, "invalid filters: expected a JSON object")
    out = []
    for key, raw in sorted(data.items()):
        if key not in FILTER_KEYS:
            raise DockerError(400, f"invalid filter '{key[:40]}'")
        vals = _values(key, raw)
        if vals:
            out.append((key, vals))
    return Filters(tuple(out))


def parse_since(text: str) -> float | None:
    """Docker's ``since``/``until``: seconds since the epoch with an optional
    ``.nanoseconds``; ``""`` or ``0`` is unset (None)."""
    t = text.strip()
    if t == "":
        return None
    m = re.fullmatch(r"(\d{1,12})(?:\.(\d{1,9}))?", t)
    if m is None:
        raise DockerError(400, f"invalid time {t[:40]!r}: want seconds[.nanoseconds]")
    value = int(m[1]) + (int(m[2].ljust(9, "0")) / 1e9 if m[2] else 0.0)
    return value or None


def parse_tail(text: str) -> int | None:
    """``all`` (or empty, or negative) is every line: None."""
    t = text.strip()
    if t in ("", "all"):
        return None
    if not re.fullmatch(r"-?\d{1,12}", t):
        raise DockerError(400, f"invalid tail {t[:40]!r}: want a number or 'all'")
    n = int(t)
    return None if n < 0 else n


@dataclass(frozen=True)
class LogsQuery:
    tail: int | None
    since: float | None
    follow: bool
    timestamps: bool
    stdout: bool
    stderr: bool
    until: float | None = None  # only lines logged at or before it (and follow ends then)

    @classmethod
    def from_route(cls, r: Route) -> LogsQuery:
        q = cls(
            tail=parse_tail(r.arg("tail")),
            since=parse_since(r.arg("since")),
            follow=query_bool(r, "follow"),
            timestamps=query_bool(r, "timestamps"),
            stdout=query_bool(r, "stdout"),
            stderr=query_bool(r, "stderr"),
            until=parse_since(r.arg("until")),
        )
        if not (q.stdout or q.stderr):
            raise DockerError(400, "Bad parameters: you must choose at least one stream")
        if q.until is not None and q.since is not None and q.until < q.since:
            raise DockerError(400, "until is before since: no line can match")
        return q
