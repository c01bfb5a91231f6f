"""Exactly-once for a session whose path has a relay in the ``forward`` role.

A real `vic agent` (``tests.fault.agentpath``) reaches esx-a's pipe ingress;
esx-a's peer link goes (through a cut proxy) to esx-b, which does not end the
streams but forwards the whole link (``[[peer.listen]] forward``), through a
second cut proxy, to the appliance's ``[[endpoint.link]]`` (``forwarded = true``),
where the resumable streams and the sealed sessions end. The middle relay is
killed (SIGKILL), stopped (SIGTERM), frozen and thawed, frozen and killed, and
both links are cut, while execs echo random payloads and the main process logs
its lines (``tests.fault.agentbreaks``): every byte once, in order, each exit
status once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fault.agentbreaks import run_schedule

pytestmark = pytest.mark.slow

MIDDLE = ["kill-b", "stop-b", "freeze-b", "freeze-kill-b", "cut-link", "cut-forwarded"]


async def test_middle_relay_killed_and_both_links_cut(tmp_path: Path) -> None:
    faults = [
        ("kill-b", 0.15),
        ("cut-forwarded", 0.35),
        ("freeze-kill-b", 0.55),
        ("cut-link", 0.75),
    ]
    midway, _ = await run_schedule(tmp_path, "forward", 2, [700_000, 600_000, 600_000], faults)
    assert midway == [True] * 4


async def test_middle_relay_stopped_frozen_and_ingress_killed(tmp_path: Path) -> None:
    faults = [("stop-b", 0.2), ("freeze-b", 0.5), ("kill-a", 0.75)]
    midway, streams = await run_schedule(tmp_path, "forward", 3, [700_000, 700_000], faults)
    assert midway == [True] * 3
    assert streams >= 3  # the probe, the first, the one after esx-a's restart


Schedule = tuple[int, list[int], list[tuple[str, float]]]
schedules: st.SearchStrategy[Schedule] = st.tuples(
    st.integers(0, 2**32),
    st.lists(st.integers(50_000, 300_000), min_size=2, max_size=3),
    st.lists(
        st.tuples(st.sampled_from([*MIDDLE, "kill-a"]), st.floats(0.05, 0.9)),
        min_size=1,
        max_size=3,
    ),
)


@settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schedule=schedules)
async def test_forward_random_breaks_are_exactly_once(
    tmp_path_factory: pytest.TempPathFactory, schedule: Schedule
) -> None:
    seed, sizes, faults = schedule
    await run_schedule(tmp_path_factory.mktemp("s"), "forward", seed, sizes, faults)
