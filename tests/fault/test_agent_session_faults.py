"""Exactly-once for a real `vic agent` process's session while the path breaks.

The agent runs from its TOML (guestinfo file store, ``[session] enabled``, the
console a Unix socket into relay esx-a's pipe ingress; ``tests.fault.agentpath``),
over the peer mesh to a real `vic vspc`. Its main process writes paced lines to
the container logs; two or three execs (``exec -i``) echo random payloads back
beside a ``seq`` on stderr (``tests.fault.agentbreaks``). A hypothesis-drawn
schedule breaks the path at points set by how much came back: esx-a killed
(SIGKILL) or stopped (SIGTERM) and started again (the agent's socket ends: it
reconnects and the session resumes), esx-a or esx-b frozen (SIGSTOP) and thawed,
esx-b killed, the peer link cut. Every exec's stdout must be its stdin, its stderr
the whole ``seq``, each once and in order, its exit status once; the main
process's lines each once, in order, then its exit status.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fault.agentbreaks import FAULTS, FORWARD_ONLY, run_schedule

pytestmark = pytest.mark.slow


async def test_agent_relay_killed_frozen_and_link_cut(tmp_path: Path) -> None:
    faults = [("kill-a", 0.15), ("cut-link", 0.4), ("freeze-b", 0.6), ("stop-a", 0.8)]
    midway, streams = await run_schedule(tmp_path, "mesh", 1, [700_000, 600_000, 600_000], faults)
    assert midway == [True] * 4
    assert streams >= 4  # the probe, the first, one after each restart of esx-a


Schedule = tuple[int, list[int], list[tuple[str, float]]]
schedules: st.SearchStrategy[Schedule] = st.tuples(
    st.integers(0, 2**32),
    st.lists(st.integers(50_000, 300_000), min_size=2, max_size=3),
    st.lists(
        st.tuples(st.sampled_from(sorted(set(FAULTS) - FORWARD_ONLY)), st.floats(0.05, 0.9)),
        min_size=1,
        max_size=3,
    ),
)


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schedule=schedules)
async def test_agent_random_breaks_are_exactly_once(
    tmp_path_factory: pytest.TempPathFactory, schedule: Schedule
) -> None:
    seed, sizes, faults = schedule
    await run_schedule(tmp_path_factory.mktemp("s"), "mesh", seed, sizes, faults)
