"""Exactly-once both ways for a tethered VM's sessions while the path breaks.

The real tether (``guestagent.tether``, real exec processes) reaches a real
`vic vspc` with sessions through a real ingress relay, over the peer mesh
(ingress relay -> cut proxy -> appliance-host relay -> appliance) or directly.
Several execs run at once, each a ``cat`` of counter lines (appliance -> VM ->
appliance) beside a ``seq`` on stderr (VM -> appliance). At points set by how
much output has arrived, the path breaks: the ingress relay killed (the VM's
stream ends: for the session a cut, the tether reconnects and it resumes) or
stopped, the appliance-host relay killed, the peer link cut, a relay frozen and
thawed. Stdin runs at most 128 KiB ahead of its echo and is held back while a
break is dealt, so every break strikes with bytes in flight both ways (the fixed
cases assert it, and that each ingress restart made the tether reconnect).
Every exec's stdout must be its stdin, its stderr the whole ``seq``,
each once and in order, and its exit status must arrive exactly once.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fault.sessionmesh import HOLD_MARGIN, ExecRun, Gate, SessionMesh
from tests.fault.topology import counter
from tests.support.daemons import Daemon, Daemons
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

EXECS = 3
LINES = 40_000  # 440 kB of stdin per exec, echoed back
SEQ = 50_000  # about 290 kB of stderr per exec
Fault = Callable[[SessionMesh, list[ExecRun]], Awaitable[None]]


def want_err() -> bytes:
    return b"".join(b"%d\n" % k for k in range(1, SEQ + 1))


def new_runs(gate: Gate) -> list[ExecRun]:
    return [
        ExecRun(f"seq 1 {SEQ} >&2 & cat; wait; exit {i + 3}", counter(i * LINES, LINES), gate=gate)
        for i in range(EXECS)
    ]


def echoed(runs: list[ExecRun]) -> int:
    return sum(len(r.out) for r in runs)


def relay(sm: SessionMesh, which: str) -> Daemon:
    d = sm.a if which == "ingress" else sm.b
    assert d is not None
    return d


async def restart(d: Daemon, sig: int) -> None:
    d.kill(sig)
    await d.wait_exit()
    await d.start()


async def held() -> None:
    """While a daemon is frozen: until this process (the tether, the exec clients) has
    nothing left to do but wait on the path, i.e. the frozen daemon holds it up."""
    with trio.move_on_after(5.0):
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)


def kill(which: str, sig: int = signal.SIGKILL) -> Fault:
    async def fault(sm: SessionMesh, runs: list[ExecRun]) -> None:
        await restart(relay(sm, which), sig)

    return fault


def freeze(which: str, then_kill: bool) -> Fault:
    async def fault(sm: SessionMesh, runs: list[ExecRun]) -> None:
        d = relay(sm, which)
        d.freeze()
        await held()
        if then_kill:
            d.kill(signal.SIGKILL)
        d.thaw()
        if then_kill:
            await d.wait_exit()
            await d.start()

    return fault


async def cut_link(sm: SessionMesh, runs: list[ExecRun]) -> None:
    sm.proxy.cut()


FAULTS: dict[str, Fault] = {
    "kill-ingress": kill("ingress"),
    "stop-ingress": kill("ingress", signal.SIGTERM),
    "freeze-ingress": freeze("ingress", then_kill=False),
    "freeze-kill-ingress": freeze("ingress", then_kill=True),
    "kill-host": kill("host"),
    "freeze-host": freeze("host", then_kill=False),
    "freeze-kill-host": freeze("host", then_kill=True),
    "cut-link": cut_link,
}
MESH_ONLY = {"kill-host", "freeze-host", "freeze-kill-host", "cut-link"}


async def run_scenario(
    tmp: Path, *, mesh: bool, faults: list[tuple[str, float]]
) -> tuple[list[bool], int]:
    """Execs through the path; each fault once that fraction of the stdin came back.
    For each fault, whether output was still on its way when it struck; and how many
    streams reached the appliance (the probe, the first, one per reconnection)."""
    gate = Gate()
    runs = new_runs(gate)
    midway: list[bool] = []
    total = EXECS * LINES * 11
    async with Daemons(tmp) as ds, trio.open_nursery() as n:
        sm = SessionMesh(tmp, ds, mesh=mesh)
        with trio.fail_after(45):
            await sm.start(n)
            await sm.start_tether(n)
            async with trio.open_nursery() as execs:
                for r in runs:
                    execs.start_soon(r.run, sm.console_socket)
                for name, at in sorted(faults, key=lambda f: f[1]):
                    gate.hold(at + HOLD_MARGIN)
                    await wait_until(lambda: echoed(runs) >= at * total, None)  # noqa: B023
                    gate.shut()
                    midway.append(echoed(runs) < total)
                    await FAULTS[name](sm, runs)
                    gate.open()
        n.cancel_scope.cancel()
        bad = [f"exec {i}: {p}" for i, r in enumerate(runs) for p in r.check(want_err(), i + 3)]
        assert not bad, "\n".join(bad) + ds.logs()
        return midway, sm.app.log_text().count("relayed stream")


async def test_ingress_relay_killed_twice_over_the_mesh(tmp_path: Path) -> None:
    """The VM's stream dies with the ingress relay, twice: the session carries on."""
    faults = [("kill-ingress", 0.2), ("freeze-kill-ingress", 0.6)]
    midway, streams = await run_scenario(tmp_path, mesh=True, faults=faults)
    assert midway == [True, True] and streams >= 4


async def test_host_relay_killed_and_link_cut(tmp_path: Path) -> None:
    faults = [("cut-link", 0.15), ("kill-host", 0.5), ("freeze-host", 0.8)]
    midway, _ = await run_scenario(tmp_path, mesh=True, faults=faults)
    assert midway == [True, True, True]


async def test_direct_path_ingress_stopped_and_frozen(tmp_path: Path) -> None:
    faults = [("stop-ingress", 0.2), ("freeze-ingress", 0.55)]
    midway, streams = await run_scenario(tmp_path, mesh=False, faults=faults)
    assert midway == [True, True] and streams >= 3


Schedule = tuple[bool, list[tuple[str, float]]]


def schedules_on(mesh: bool) -> st.SearchStrategy[Schedule]:
    """One to three breaks at random points, of the kinds this path has."""
    names = sorted(FAULTS) if mesh else sorted(set(FAULTS) - MESH_ONLY)
    at = st.floats(0.05, 0.9)
    breaks = st.lists(st.tuples(st.sampled_from(names), at), min_size=1, max_size=3)
    return breaks.map(lambda b: (mesh, b))


@settings(
    max_examples=5,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schedule=st.booleans().flatmap(schedules_on))
async def test_random_breaks_are_exactly_once(
    tmp_path_factory: pytest.TempPathFactory, schedule: Schedule
) -> None:
    mesh, faults = schedule
    await run_scenario(tmp_path_factory.mktemp("s"), mesh=mesh, faults=faults)
