"""bench/_rounds.py (contenders interleaved round by round) and bench/_steal.py (the load
and steal every bench records)."""

from __future__ import annotations

import _rounds
import _steal
import pytest
from hypothesis import given
from hypothesis import strategies as st


def test_interleaved_runs_a_b_a_b() -> None:
    calls: list[tuple[int, str]] = []

    def run(rnd: int, name: str) -> str:
        calls.append((rnd, name))
        return f"{name}{rnd}"

    out = _rounds.interleaved(3, ["a", "b"], run)
    assert [n for _, n in calls] == ["a", "b", "a", "b", "a", "b"]
    assert out == {"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}


def test_rotate_starts_each_round_one_later() -> None:
    calls: list[str] = []
    _rounds.interleaved(3, ["a", "b", "c"], lambda _, n: calls.append(n), rotate=True)
    assert "".join(calls) == "abc" + "bca" + "cab"


@given(
    rounds=st.integers(0, 6),
    names=st.lists(st.text("abcdef", min_size=1, max_size=3), unique=True, max_size=5),
    rotate=st.booleans(),
)
def test_every_round_runs_every_contender_once(rounds: int, names: list[str], rotate: bool) -> None:
    calls: list[tuple[int, str]] = []

    def run(r: int, n: str) -> int:
        calls.append((r, n))
        return r

    out = _rounds.interleaved(rounds, names, run, rotate=rotate)
    assert len(calls) == rounds * len(names)
    for r in range(rounds):  # round r's calls come together, each contender once
        chunk = calls[r * len(names) : (r + 1) * len(names)]
        assert sorted(n for _, n in chunk) == sorted(names)
        assert {x for x, _ in chunk} <= {r}
    assert out == {n: list(range(rounds)) for n in names}


async def test_ainterleaved_awaits_in_the_same_order() -> None:
    calls: list[str] = []

    async def run(rnd: int, name: str) -> int:
        calls.append(name)
        return rnd

    out = await _rounds.ainterleaved(2, ["x", "y", "z"], run, rotate=True)
    assert "".join(calls) == "xyz" + "yzx"
    assert out == {"x": [0, 1], "y": [0, 1], "z": [0, 1]}


def test_median_run_is_a_whole_run() -> None:
    runs = [{"p99": 3.0, "id": 0}, {"p99": 1.0, "id": 1}, {"p99": 2.0, "id": 2}]
    assert _rounds.median_run(runs, lambda r: r["p99"])["id"] == 2
    assert _rounds.median_run(runs[:2], lambda r: r["p99"])["id"] == 1  # the lower middle
    with pytest.raises(ValueError):
        _rounds.median_run([], lambda r: 0.0)


def test_stamp_records_steal_and_load_beside_what_is_there() -> None:
    watch = _steal.Watch()
    result = _steal.stamp({"environment": {"python": "3.11"}, "x": 1}, watch)
    env = result["environment"]
    assert env["python"] == "3.11" and result["x"] == 1
    assert 0.0 <= env["cpu_steal"] <= 1.0
    assert len(env["loadavg_start"]) == 3 and len(env["loadavg_end"]) == 3
    assert _steal.describe(result).startswith("load ")
    assert _steal.describe({}) == "load ?, steal ?"


def test_describe_reads_the_recorded_figures() -> None:
    r = {"environment": {"cpu_steal": 0.25, "loadavg_start": [1.5, 0, 0], "loadavg_end": [3.0]}}
    assert _steal.describe(r) == "load 1.5 -> 3.0, steal 25%"
