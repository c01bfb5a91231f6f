"""The per-port vMotion table: every row, driven through the public classifiers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from common.proto.vmotion import TABLE, Effect, Input, PortVMotion, State, Step

SEQ = b"\xff\x00\xff\xffs"  # 0xFF in seq and secret are just bytes at this layer
SECRET = b"\xff\xfe\x00k"
COOKIE = SEQ + SECRET
TIMEOUT = 5.0


def machine_in(state: State) -> PortVMotion:
    vm = PortVMotion()
    if state is State.IDLE:
        return vm
    vm.begin("src", SEQ, SECRET, 0.0, TIMEOUT, is_carrier=True, busy=False)
    if state is State.PEERED:
        vm.peer("dst", COOKIE, eligible=True)
    assert vm.state is state
    return vm


def _peer(vm: PortVMotion) -> Step:
    # in PEERED, "dst" is already the destination: a second, different one
    conn = "other" if vm.state is State.PEERED else "dst"
    return vm.peer(conn, COOKIE, eligible=True)


def _must(step: Step | None) -> Step:
    assert step is not None
    return step


DRIVERS: dict[Input, Callable[[PortVMotion], Step]] = {
    Input.BEGIN: lambda vm: vm.begin(
        "src", b"s2", b"x2", 1.0, TIMEOUT, is_carrier=True, busy=False
    ),
    Input.BEGIN_BUSY: lambda vm: vm.begin(
        "src", b"s2", b"x2", 1.0, TIMEOUT, is_carrier=True, busy=True
    ),
    Input.BEGIN_NOT_CARRIER: lambda vm: vm.begin(
        "x", b"s2", b"x2", 1.0, TIMEOUT, is_carrier=False, busy=False
    ),
    Input.PEER: _peer,
    Input.PEER_REPEAT: lambda vm: vm.peer("dst", COOKIE, eligible=True),
    Input.PEER_BAD: lambda vm: vm.peer("x", SEQ + b"wrong", eligible=True),
    Input.COMPLETE: lambda vm: vm.complete("dst", SEQ),
    Input.COMPLETE_BAD: lambda vm: vm.complete("x", SEQ),
    Input.ABORT: lambda vm: vm.abort("src"),
    Input.ABORT_BAD: lambda vm: vm.abort("x"),
    Input.EXPIRE: lambda vm: _must(vm.expire(TIMEOUT)),
    Input.SOURCE_CLOSED: lambda vm: _must(vm.closed("src")),
    Input.DEST_CLOSED: lambda vm: _must(vm.closed("dst")),
}

# the rows the classifiers can produce; the others exist only to make the table total
REACHABLE: set[tuple[State, Input]] = {
    (State.IDLE, Input.BEGIN),
    (State.IDLE, Input.BEGIN_BUSY),
    (State.IDLE, Input.BEGIN_NOT_CARRIER),
    (State.IDLE, Input.PEER_BAD),
    (State.IDLE, Input.COMPLETE_BAD),
    (State.IDLE, Input.ABORT_BAD),
    (State.PENDING, Input.BEGIN),
    (State.PENDING, Input.BEGIN_NOT_CARRIER),
    (State.PENDING, Input.PEER),
    (State.PENDING, Input.PEER_BAD),
    (State.PENDING, Input.COMPLETE_BAD),
    (State.PENDING, Input.ABORT),
    (State.PENDING, Input.ABORT_BAD),
    (State.PENDING, Input.EXPIRE),
    (State.PENDING, Input.SOURCE_CLOSED),
    (State.PEERED, Input.BEGIN),
    (State.PEERED, Input.BEGIN_NOT_CARRIER),
    (State.PEERED, Input.PEER),
    (State.PEERED, Input.PEER_REPEAT),
    (State.PEERED, Input.PEER_BAD),
    (State.PEERED, Input.COMPLETE),
    (State.PEERED, Input.COMPLETE_BAD),
    (State.PEERED, Input.ABORT),
    (State.PEERED, Input.ABORT_BAD),
    (State.PEERED, Input.EXPIRE),
    (State.PEERED, Input.SOURCE_CLOSED),
    (State.PEERED, Input.DEST_CLOSED),
}


def _row_id(k: tuple[State, Input]) -> tuple[str, str]:
    return (k[0].value, k[1].value)


REACHABLE_ROWS = sorted(REACHABLE, key=_row_id)
UNREACHABLE_ROWS = sorted({(s, i) for s in State for i in Input} - REACHABLE, key=_row_id)


def test_table_is_total() -> None:
    assert set(TABLE) == {(s, i) for s in State for i in Input}


def test_bookkeeping_effects_only_in_expected_rows() -> None:
    starts = [k for k, (eff, _) in TABLE.items() if Effect.START in eff]
    assert starts == [(State.IDLE, Input.BEGIN)]
    switches = [k for k, (eff, _) in TABLE.items() if Effect.SWITCH_TO_DEST in eff]
    assert switches == [(State.PEERED, Input.COMPLETE)]
    # every row that leaves a pending vMotion for IDLE clears it, and only those
    for (state, _inp), (eff, nxt) in TABLE.items():
        assert (Effect.CLEAR in eff) == (state is not State.IDLE and nxt is State.IDLE)


@pytest.mark.parametrize(("state", "inp"), REACHABLE_ROWS)
def test_every_reachable_row(state: State, inp: Input) -> None:
    vm = machine_in(state)
    step = DRIVERS[inp](vm)
    effects, nxt = TABLE[(state, inp)]
    assert step.input is inp
    assert step.state_before is state
    assert step.effects == effects
    assert step.state_after is nxt and vm.state is nxt
    assert (vm.pending is None) == (nxt is State.IDLE)


@pytest.mark.parametrize(
    ("state", "inp"),
    UNREACHABLE_ROWS,
)
def test_unreachable_rows_change_nothing(state: State, inp: Input) -> None:
    effects, nxt = TABLE[(state, inp)]
    assert nxt is state or (state, inp) == (State.PENDING, Input.DEST_CLOSED)
    assert not {Effect.START, Effect.CLEAR, Effect.SWITCH_TO_DEST, Effect.SET_DEST} & set(effects)


def test_begin_records_seq_secret_and_deadline() -> None:
    vm = PortVMotion()
    step = vm.begin("src", SEQ, SECRET, 10.0, TIMEOUT, is_carrier=True, busy=False)
    assert step.effects[:2] == (Effect.START, Effect.SEND_GOAHEAD)
    assert step.after is not None
    assert step.after.seq == SEQ and step.after.secret == SECRET
    assert step.after.cookie == COOKIE
    assert step.after.source == "src" and step.after.dest is None
    assert vm.deadline == 15.0


def test_second_begin_is_notnow_and_keeps_the_first() -> None:
    vm = machine_in(State.PENDING)
    step = vm.begin("src", b"other", b"sec", 1.0, TIMEOUT, is_carrier=True, busy=False)
    assert Effect.SEND_NOTNOW in step.effects
    assert step.seq == b"other"
    assert vm.pending is not None and vm.pending.seq == SEQ


def test_peer_needs_the_exact_cookie() -> None:
    for bad in (SEQ, SEQ + SECRET[:-1], SEQ + SECRET + b"x", b"\x00" + COOKIE, SECRET + SEQ):
        vm = machine_in(State.PENDING)
        step = vm.peer("dst", bad, eligible=True)
        assert step.input is Input.PEER_BAD
        assert vm.state is State.PENDING


def test_peer_from_source_or_ineligible_conn_is_refused() -> None:
    vm = machine_in(State.PENDING)
    assert vm.peer("src", COOKIE, eligible=True).input is Input.PEER_BAD
    assert vm.peer("dst", COOKIE, eligible=False).input is Input.PEER_BAD
    assert vm.state is State.PENDING


def test_complete_needs_dest_and_seq() -> None:
    vm = machine_in(State.PEERED)
    assert vm.complete("src", SEQ).input is Input.COMPLETE_BAD
    assert vm.complete("dst", SEQ + b"x").input is Input.COMPLETE_BAD
    assert vm.state is State.PEERED
    step = vm.complete("dst", SEQ)
    assert step.input is Input.COMPLETE and step.state_after is State.IDLE
    assert step.before is not None and step.before.dest == "dst"


def test_expire_only_at_deadline() -> None:
    vm = machine_in(State.PENDING)
    assert vm.expire(TIMEOUT - 0.001) is None
    assert vm.state is State.PENDING
    step = vm.expire(TIMEOUT)
    assert step is not None and step.state_after is State.IDLE
    assert vm.expire(100.0) is None


def test_dest_closed_returns_to_pending_and_new_dest_can_peer() -> None:
    vm = machine_in(State.PEERED)
    step = vm.closed("dst")
    assert step is not None and vm.state is State.PENDING
    assert vm.pending is not None and vm.pending.dest is None
    step = vm.peer("dst2", COOKIE, eligible=True)
    assert step.input is Input.PEER and step.state_after is State.PEERED


def test_source_closed_keeps_vmotion_pending() -> None:
    vm = machine_in(State.PEERED)
    assert vm.closed("src") is not None
    assert vm.pending is not None and vm.pending.source is None
    assert vm.abort("src").input is Input.ABORT_BAD  # it is gone; it cannot abort
    assert vm.complete("dst", SEQ).input is Input.COMPLETE
    assert vm.closed("unrelated") is None
