"""tests.support.daemons' own helpers: TOML out, and a daemon that will not start."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.daemons import Daemon, toml_dumps

_keys = st.text(alphabet="abcdefghij-_", min_size=1, max_size=8)
_scalars = st.one_of(
    st.text(max_size=20),
    st.integers(-(10**9), 10**9),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
_values = st.recursive(
    st.one_of(_scalars, st.lists(st.text(max_size=10), max_size=3)),
    lambda inner: st.dictionaries(_keys, inner, min_size=1, max_size=3),
    max_leaves=12,
)


@given(
    st.dictionaries(
        _keys,
        st.one_of(
            _values,
            st.lists(
                st.dictionaries(_keys, _scalars, min_size=1, max_size=3), min_size=1, max_size=3
            ),
        ),
        max_size=5,
    )
)
def test_toml_round_trip(doc: dict[str, object]) -> None:
    assert tomllib.loads(toml_dumps(doc)) == doc


async def test_a_daemon_that_exits_at_start_says_so(tmp_path: Path) -> None:
    d = Daemon("relay", "broken", {"host": "esx-x"}, tmp_path)  # no egress: exit 2
    with pytest.raises(RuntimeError, match=r"exited \(2\)"):
        await d.start()
    assert "egress" in d.log_text()
    d.cleanup()
