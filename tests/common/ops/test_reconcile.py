"""common.ops.reconcile: keyed diff, repeated list items, errors collected by key."""

from __future__ import annotations

import pytest

from common.ops.config import ConfigError
from common.ops.reconcile import Plan, diff, indexed, same_item, start_all


def test_diff_stops_starts_and_keeps() -> None:
    plan = diff({"a": 1, "b": 2, "c": 3}, {"c": 3, "b": 20, "d": 4})
    assert plan == Plan(stop=("a", "b"), start=(("b", 20), ("d", 4)), keep=("c",))
    assert plan.restarts("b") and not plan.restarts("a") and not plan.restarts("d")


def test_diff_with_same_never_restarts() -> None:
    plan = diff({"a": 1}, {"a": 2, "b": 3}, same=lambda *_: True)
    assert plan == Plan(stop=(), start=(("b", 3),), keep=("a",))


def test_empty_sides() -> None:
    assert diff({}, {}) == Plan((), (), ())
    assert diff({"x": 1}, {}) == Plan(("x",), (), ())
    assert diff({}, {"x": 1}) == Plan((), (("x", 1),), ())


def test_indexed_keeps_repeats_apart_and_items_that_moved() -> None:
    old = indexed(["tcp:a", "unix:b"], str)
    new = indexed(["unix:b", "tcp:a", "tcp:a"], str)
    assert new == {
        ("unix:b", 0): (0, "unix:b"),
        ("tcp:a", 0): (1, "tcp:a"),
        ("tcp:a", 1): (2, "tcp:a"),
    }
    plan = diff(old, new, same=same_item)
    assert plan.keep == (("tcp:a", 0), ("unix:b", 0))
    assert plan.start == ((("tcp:a", 1), (2, "tcp:a")),)  # its index names its key


async def test_start_all_collects_config_errors_and_goes_on() -> None:
    started: list[str] = []

    async def start(key: str, spec: int) -> None:
        if spec < 0:
            raise ConfigError(f"listen.{key}.port", "cannot bind")
        started.append(key)

    errors = await start_all((("a", 1), ("b", -1), ("c", 3)), start)
    assert started == ["a", "c"]
    assert [str(e) for e in errors] == [str(ConfigError("listen.b.port", "cannot bind"))]


async def test_start_all_can_stop_at_the_first_error() -> None:
    started: list[str] = []

    async def start(key: str, spec: int) -> None:
        if spec < 0:
            raise ConfigError(key, "bad")
        started.append(key)

    with pytest.raises(ConfigError):
        await start_all((("a", 1), ("b", -1), ("c", 3)), start, keep_going=False)
    assert started == ["a"]


async def test_other_errors_are_not_config_errors() -> None:
    async def start(key: str, spec: int) -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        await start_all((("a", 1),), start)
