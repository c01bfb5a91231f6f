"""Sidecar event log lines: one JSON object per line, with the time.

Sans-IO: the caller passes the time (seconds since the epoch).

A line is written for every port event (a vMotion BEGIN among them), so it is
built cheaply: one JSON encoder for every line (``json.dumps`` with options
builds one per call), and the time from ``time.gmtime`` with the formatted
second kept while it repeats (``datetime`` costs several times more). The text
is the same as ``datetime.fromtimestamp(now, UTC)`` and ``json.dumps`` give.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any


def _default(value: object) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"), ensure_ascii=False)
#: The last whole second formatted, and its text.
_last_second: list[tuple[float, str]] = [(math.nan, "")]


def _second_text(whole: float) -> str:
    last, text = _last_second[0]
    if whole != last:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _last_second[0] = (whole, text)
    return text


def iso_time(now: float) -> str:
    """``now`` as ISO-8601 UTC with microseconds, rounded as ``datetime`` rounds them
    (half to even, of the fraction)."""
    frac, whole = math.modf(now)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole, us = whole + 1.0, us - 1_000_000
    elif us < 0:
        whole, us = whole - 1.0, us + 1_000_000
    return f"{_second_text(whole)}.{us:06d}Z"


def format_event(kind: str, fields: dict[str, object], now: float) -> bytes:
    """``{"time": ISO-8601 UTC, "ts": epoch seconds, "event": kind, ...fields}`` + newline."""
    obj: dict[str, object] = {"time": iso_time(now), "ts": round(now, 6), "event": kind}
    for k, v in fields.items():
        if k not in obj:
            obj[k] = v
    return _ENCODER.encode(obj).encode("utf-8", "backslashreplace") + b"\n"
