"""The event log line: the same text as the ``datetime``/``json.dumps`` reference."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from vspc.console.eventlog import _default, format_event, iso_time

#: 1901 .. 9999-12-31T23:59:58 (datetime's and every gmtime's range).
_TIMES = st.floats(min_value=-(2.0**31), max_value=253402300798.0, allow_nan=False)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(max_size=8)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_KEYS = st.sampled_from(["time", "ts", "event", "seq", "peer"]) | st.text(max_size=6)


def reference(kind: str, fields: dict[str, object], now: float) -> bytes:
    stamp = dt.datetime.fromtimestamp(now, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    obj: dict[str, Any] = {"time": stamp, "ts": round(now, 6), "event": kind}
    for k, v in fields.items():
        obj.setdefault(k, v)
    text = json.dumps(obj, default=_default, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace") + b"\n"


@given(st.lists(_TIMES, min_size=1, max_size=4), st.text(), st.dictionaries(_KEYS, _VALUES))
def test_same_text_as_the_reference(
    times: list[float], kind: str, fields: dict[str, object]
) -> None:
    for now in times:  # (several in a row: the kept second must not leak into the next)
        assert format_event(kind, fields, now) == reference(kind, fields, now)


@given(st.integers(min_value=-(2**31), max_value=2**34), st.integers(0, 999_999))
def test_same_second_and_its_neighbours(second: int, us: int) -> None:
    for now in (second + us / 1e6, second + 0.9999996, second - 0.0000004, second + 1e-7):
        want = dt.datetime.fromtimestamp(now, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert iso_time(now) == want


def test_rounding_up_into_the_next_second() -> None:
    assert iso_time(1_700_000_000.9999996) == "2023-11-14T22:13:21.000000Z"
    assert iso_time(-0.0000004) == "1970-01-01T00:00:00.000000Z"
    assert iso_time(-1.5) == "1969-12-31T23:59:58.500000Z"
    assert format_event("x", {"ts": 1, "b": b"\x01"}, 0.25) == (
        b'{"time":"1970-01-01T00:00:00.250000Z","ts":0.25,"event":"x","b":"01"}\n'
    )
