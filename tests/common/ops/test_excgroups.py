"""common.ops.excgroups: the one walk over (nested) exception groups."""

from __future__ import annotations

import pytest
import trio

from common.ops.config import ConfigError
from common.ops.excgroups import first_leaf, first_of, leaves, unwrap_single

A = ValueError("a")
B = KeyError("b")
C = ConfigError("listen.host", "cannot bind")
NESTED = BaseExceptionGroup("outer", [ExceptionGroup("inner", [A, B]), C])


def test_leaves_are_depth_first_in_order() -> None:
    assert leaves(NESTED) == [A, B, C]
    assert leaves(A) == [A]


def test_first_leaf_digs_through_groups() -> None:
    assert first_leaf(NESTED) is A
    assert first_leaf(B) is B


def test_first_of_finds_a_nested_leaf_of_the_type() -> None:
    assert first_of(NESTED, ConfigError) is C
    assert first_of(NESTED, KeyError) is B
    assert first_of(NESTED, TypeError) is None
    assert first_of(C, ConfigError) is C


def test_unwrap_single_stops_at_a_group_of_two() -> None:
    two = ExceptionGroup("two", [A, B])
    assert unwrap_single(ExceptionGroup("one", [ExceptionGroup("one", [A])])) is A
    assert unwrap_single(ExceptionGroup("one", [two])) is two
    assert unwrap_single(A) is A


async def test_first_leaf_of_a_real_nursery_failure() -> None:
    async def fail() -> None:
        raise C

    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
    assert first_leaf(info.value) is C
    assert first_of(info.value, ConfigError) is C
