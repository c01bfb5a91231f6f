"""Exactly-once for a real `vic agent` process's session while the path breaks.

The agent runs from its TOML (guestinfo file store, ``[session] enabled``, the
console a Unix socket into relay esx-a's pipe ingress; ``tests.fault.agentpath``),
over the peer mesh to a real `vic vspc`. Its main process writes paced lines to
the container logs; two or three execs (``exec -i``) echo random payloads back
beside a ``seq`` on stderr. A hypothesis-drawn schedule breaks the path at points
set by how much came back: esx-a killed (SIGKILL) or stopped (SIGTERM) and started
again (the agent's socket ends: it reconnects and the session resumes), esx-a or
esx-b frozen (SIGSTOP) and thawed, the peer link cut. Every exec's stdout must be
its stdin, its stderr the whole ``seq``, each once and in order, its exit status
once; the main process's lines each once, in order, then its exit status.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fault.agentpath import AgentPath, quiet
from tests.fault.sessionmesh import ExecRun, Gate
from tests.support.daemons import Daemon, Daemons
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

Fault = Callable[[AgentPath], Awaitable[None]]


def relay(p: AgentPath, which: str) -> Daemon:
    d = p.a if which == "a" else p.b
    assert d is not None
    return d


def kill(which: str, sig: int) -> Fault:
    async def fault(p: AgentPath) -> None:
        await p.restart_relay(relay(p, which), sig)

    return fault


def freeze(which: str) -> Fault:
    async def fault(p: AgentPath) -> None:
        d = relay(p, which)
        d.freeze()
        await quiet()
        d.thaw()

    return fault


async def cut_link(p: AgentPath) -> None:
    p.link.cut()


FAULTS: dict[str, Fault] = {
    "kill-a": kill("a", signal.SIGKILL),
    "stop-a": kill("a", signal.SIGTERM),
    "freeze-a": freeze("a"),
    "freeze-b": freeze("b"),
    "kill-b": kill("b", signal.SIGKILL),
    "cut-link": cut_link,
}


def exec_runs(gate: Gate, seed: int, sizes: list[int]) -> tuple[list[ExecRun], list[bytes]]:
    """One exec per size: ``cat`` of that many random bytes, a ``seq`` on stderr."""
    rnd = random.Random(seed)
    runs, errs = [], []
    for i, n in enumerate(sizes):
        seq = 2_000 + 1_000 * i
        script = f"seq 1 {seq} >&2 & cat; wait; exit {i + 3}"
        runs.append(ExecRun(script, rnd.randbytes(n), gate=gate))
        errs.append(b"".join(b"%d\n" % k for k in range(1, seq + 1)))
    return runs, errs


async def run_schedule(
    tmp: Path, seed: int, sizes: list[int], faults: list[tuple[str, float]]
) -> tuple[list[bool], int]:
    """Execs and the main process through the path; each fault once that fraction of
    the execs' stdin came back. For each fault, whether output was still on its way;
    and how many streams reached the appliance."""
    gate = Gate()
    runs, errs = exec_runs(gate, seed, sizes)
    total = sum(sizes)
    midway: list[bool] = []
    async with Daemons(tmp) as ds, trio.open_nursery() as n:
        p = AgentPath(tmp, ds, path="mesh")
        with trio.fail_after(50):
            await p.start(n)
            async with trio.open_nursery() as execs:
                for r in runs:
                    execs.start_soon(r.run, p.console_socket)
                for name, at in sorted(faults, key=lambda f: f[1]):
                    await wait_until(lambda: sum(len(r.out) for r in runs) >= at * total, None)  # noqa: B023
                    gate.shut()
                    midway.append(sum(len(r.out) for r in runs) < total)
                    await FAULTS[name](p)
                    gate.open()
            bad = await p.finish_main()
        n.cancel_scope.cancel()
        bad += [f"exec {i}: {x}" for i, r in enumerate(runs) for x in r.check(errs[i], i + 3)]
        assert not bad, "\n".join(bad) + ds.logs()
        return midway, p.app.log_text().count("relayed stream")


async def test_agent_relay_killed_frozen_and_link_cut(tmp_path: Path) -> None:
    faults = [("kill-a", 0.15), ("cut-link", 0.4), ("freeze-b", 0.6), ("stop-a", 0.8)]
    midway, streams = await run_schedule(tmp_path, 1, [700_000, 600_000, 600_000], faults)
    assert midway == [True] * 4
    assert streams >= 4  # the probe, the first, one after each restart of esx-a


Schedule = tuple[int, list[int], list[tuple[str, float]]]
schedules: st.SearchStrategy[Schedule] = st.tuples(
    st.integers(0, 2**32),
    st.lists(st.integers(50_000, 300_000), min_size=2, max_size=3),
    st.lists(
        st.tuples(st.sampled_from(sorted(FAULTS)), st.floats(0.05, 0.9)), min_size=1, max_size=3
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
    await run_schedule(tmp_path_factory.mktemp("s"), seed, sizes, faults)
