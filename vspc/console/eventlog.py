"""Sidecar event log lines: one JSON object per line, with the time.

Sans-IO: the caller passes the time (seconds since the epoch).
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any


def _default(value: object) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def iso_time(now: float) -> str:
    t = _dt.datetime.fromtimestamp(now, tz=_dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_event(kind: str, fields: dict[str, object], now: float) -> bytes:
    """``{"time": ISO-8601 UTC, "ts": epoch seconds, "event": kind, ...fields}`` + newline."""
    obj: dict[str, object] = {"time": iso_time(now), "ts": round(now, 6), "event": kind}
    for k, v in fields.items():
        if k not in obj:
            obj[k] = v
    line = json.dumps(obj, default=_default, separators=(",", ":"), ensure_ascii=False)
    return line.encode("utf-8", "backslashreplace") + b"\n"
