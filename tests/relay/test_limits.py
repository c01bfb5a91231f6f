"""Admission control (sans-IO): global and per-VM caps, the accept-rate bucket."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.config import LimitsConfig
from relay.limits import REFUSE_GLOBAL, REFUSE_PER_VM, REFUSE_RATE, Limits, Ticket


def test_per_vm_and_global() -> None:
    lim = Limits(LimitsConfig(max_streams=3, max_streams_per_vm=2), now=0.0)
    a1 = lim.admit("a", 0.0)
    a2 = lim.admit("a", 0.0)
    assert isinstance(a1, Ticket) and isinstance(a2, Ticket)
    assert lim.admit("a", 0.0) == REFUSE_PER_VM
    b1 = lim.admit("b", 0.0)
    assert isinstance(b1, Ticket)
    assert lim.admit("c", 0.0) == REFUSE_GLOBAL
    lim.release(a1)
    assert isinstance(lim.admit("c", 0.0), Ticket)
    assert lim.per_vm == {"a": 1, "b": 1, "c": 1}


def test_unknown_vm_only_global() -> None:
    lim = Limits(LimitsConfig(max_streams=5, max_streams_per_vm=1), now=0.0)
    assert all(isinstance(lim.admit("", 0.0), Ticket) for _ in range(5))
    assert lim.admit("", 0.0) == REFUSE_GLOBAL
    assert lim.per_vm == {}


def test_accept_rate_bucket_refills_with_time() -> None:
    lim = Limits(LimitsConfig(accept_rate=10.0, accept_burst=3), now=100.0)
    got = [lim.admit("", 100.0) for _ in range(4)]
    assert [isinstance(g, Ticket) for g in got] == [True, True, True, False]
    assert got[3] == REFUSE_RATE
    assert lim.admit("", 100.05) == REFUSE_RATE  # half a token
    assert isinstance(lim.admit("", 100.2), Ticket)  # a token is back
    # A long pause refills only up to the burst.
    n = sum(isinstance(lim.admit("", 1000.0), Ticket) for _ in range(10))
    assert n == 3


def test_reconfigure_keeps_live_streams() -> None:
    lim = Limits(LimitsConfig(max_streams=10), now=0.0)
    tickets = [lim.admit("v", 0.0) for _ in range(5)]
    lim.reconfigure(LimitsConfig(max_streams=2))
    assert lim.active == 5
    assert lim.admit("w", 0.0) == REFUSE_GLOBAL
    for t in tickets:
        assert isinstance(t, Ticket)
        lim.release(t)
    assert lim.active == 0 and lim.per_vm == {}


@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.sampled_from(["", "a", "b", "c"]), st.floats(0, 0.5)),
        max_size=200,
    ),
    max_streams=st.integers(1, 8),
    per_vm=st.integers(1, 4),
)
def test_invariants(ops: list[tuple[bool, str, float]], max_streams: int, per_vm: int) -> None:
    lim = Limits(
        LimitsConfig(
            max_streams=max_streams, max_streams_per_vm=per_vm, accept_rate=20.0, accept_burst=5
        ),
        now=0.0,
    )
    now = 0.0
    held: list[Ticket] = []
    for admit, vm, dt in ops:
        now += dt
        if admit or not held:
            r = lim.admit(vm, now)
            if isinstance(r, Ticket):
                held.append(r)
        else:
            lim.release(held.pop(0))
        assert lim.active == len(held) <= max_streams
        for v, n in lim.per_vm.items():
            assert 0 < n <= per_vm
            assert n == sum(1 for t in held if t.vm == v)
