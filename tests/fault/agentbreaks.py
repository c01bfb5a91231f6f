"""Breaks of a real agent's path and the traffic they strike (``tests.fault.agentpath``).

``run_schedule`` starts the path, runs execs (``cat`` of random bytes beside a
``seq`` on stderr) while the main process logs its lines, and deals each break
once that fraction of the execs' stdin came back (stdin held back meanwhile, so
bytes are in flight both ways); then checks every byte, line and exit status.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from tests.fault.agentpath import AgentPath, PathKind, check_main, quiet
from tests.fault.sessionmesh import HOLD_MARGIN, ExecRun, Gate
from tests.support.daemons import Daemon, Daemons
from tests.support.waiting import wait_until

Fault = Callable[[AgentPath], Awaitable[None]]


def relay(p: AgentPath, which: str) -> Daemon:
    d = p.a if which == "a" else p.b
    assert d is not None
    return d


def kill(which: str, sig: int) -> Fault:
    async def fault(p: AgentPath) -> None:
        await p.restart_relay(relay(p, which), sig)

    return fault


def freeze(which: str, then_kill: bool = False) -> Fault:
    async def fault(p: AgentPath) -> None:
        d = relay(p, which)
        d.freeze()
        await quiet()
        if then_kill:
            d.kill(signal.SIGKILL)
        d.thaw()
        if then_kill:
            await p.restart_relay(d, None)

    return fault


async def cut_link(p: AgentPath) -> None:
    p.link.cut()


async def cut_forwarded(p: AgentPath) -> None:
    p.fwd.cut()


FAULTS: dict[str, Fault] = {
    "kill-a": kill("a", signal.SIGKILL),
    "stop-a": kill("a", signal.SIGTERM),
    "freeze-a": freeze("a"),
    "kill-b": kill("b", signal.SIGKILL),
    "stop-b": kill("b", signal.SIGTERM),
    "freeze-b": freeze("b"),
    "freeze-kill-b": freeze("b", then_kill=True),
    "cut-link": cut_link,
    "cut-forwarded": cut_forwarded,
}
FORWARD_ONLY = {"cut-forwarded"}


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


def echoed(runs: list[ExecRun]) -> int:
    return sum(len(r.out) for r in runs)


async def run_schedule(
    tmp: Path, path: PathKind, seed: int, sizes: list[int], faults: list[tuple[str, float]]
) -> tuple[list[bool], int]:
    """Execs and the main process through the path; each fault once that fraction of
    the execs' stdin came back. For each fault, whether output was still on its way;
    and how many streams reached the appliance's endpoint."""
    gate = Gate()
    runs, errs = exec_runs(gate, seed, sizes)
    total = sum(sizes)
    midway: list[bool] = []
    async with Daemons(tmp) as ds, trio.open_nursery() as n:
        p = AgentPath(tmp, ds, path=path)
        with trio.fail_after(50):
            await p.start(n)
            async with trio.open_nursery() as execs:
                for r in runs:
                    execs.start_soon(r.run, p.console_socket)
                for name, at in sorted(faults, key=lambda f: f[1]):
                    gate.hold(at + HOLD_MARGIN)
                    await wait_until(lambda: echoed(runs) >= at * total, None)  # noqa: B023
                    gate.shut()
                    midway.append(echoed(runs) < total)
                    await FAULTS[name](p)
                    gate.open()
            bad = check_main(*await p.finish_main())
        n.cancel_scope.cancel()
        bad += [f"exec {i}: {x}" for i, r in enumerate(runs) for x in r.check(errs[i], i + 3)]
        assert not bad, "\n".join(bad) + ds.logs()
        if path == "forward":  # the streams went through a forwarded link
            assert p.b is not None and "forwarding link from" in p.b.log_text()
        return midway, p.app.log_text().count("relayed stream")
