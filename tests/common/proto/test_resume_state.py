"""The per-stream resume state machine, the session table's decisions, the backoff."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.link.replay import ReplayPool
from common.proto.link.budget import Budget
from common.proto.link.frames import ErrorCode
from common.proto.link.mux import Mux
from common.proto.link.resume import GapError, ResumeError, ResumeProtocolError
from common.proto.link.resume_state import (
    APP_TRANSITIONS,
    TERMINAL,
    TRANSITIONS,
    AppInput,
    AppState,
    Backoff,
    PathInput,
    PathState,
    StreamMachine,
    StreamStateError,
)
from common.proto.link.sessions import SessionDirectory, Tomb, Verdict

S, In = PathState, PathInput

# every legal transition, written out once more by hand
EXPECTED = {
    (S.IDLE, In.SEND_OPEN): S.OPENING,
    (S.IDLE, In.ATTACH): S.ATTACHED,
    (S.IDLE, In.FAIL): S.FAILED,
    (S.OPENING, In.ANSWERED): S.ATTACHED,
    (S.OPENING, In.PATH_LOST): S.IDLE,
    (S.OPENING, In.COMPLETE): S.CLOSED,
    (S.OPENING, In.FAIL): S.FAILED,
    (S.ATTACHED, In.ATTACH): S.ATTACHED,
    (S.ATTACHED, In.PATH_LOST): S.DETACHED,
    (S.ATTACHED, In.SESSION_LOST): S.ORPHANED,
    (S.ATTACHED, In.COMPLETE): S.CLOSED,
    (S.ATTACHED, In.FAIL): S.FAILED,
    (S.DETACHED, In.SEND_OPEN): S.RESUMING,
    (S.DETACHED, In.ATTACH): S.ATTACHED,
    (S.DETACHED, In.FAIL): S.FAILED,
    (S.RESUMING, In.ANSWERED): S.ATTACHED,
    (S.RESUMING, In.PATH_LOST): S.DETACHED,
    (S.RESUMING, In.SESSION_LOST): S.ORPHANED,
    (S.RESUMING, In.COMPLETE): S.CLOSED,
    (S.RESUMING, In.FAIL): S.FAILED,
    (S.ORPHANED, In.SEND_OPEN): S.CONTINUING,
    (S.ORPHANED, In.FAIL): S.FAILED,
    (S.CONTINUING, In.ANSWERED): S.ATTACHED,
    (S.CONTINUING, In.PATH_LOST): S.ORPHANED,
    (S.CONTINUING, In.SESSION_LOST): S.ORPHANED,
    (S.CONTINUING, In.COMPLETE): S.CLOSED,
    (S.CONTINUING, In.FAIL): S.FAILED,
}


# how to reach each state through legal inputs
ROUTES = {
    S.IDLE: [],
    S.OPENING: [In.SEND_OPEN],
    S.ATTACHED: [In.SEND_OPEN, In.ANSWERED],
    S.DETACHED: [In.SEND_OPEN, In.ANSWERED, In.PATH_LOST],
    S.RESUMING: [In.SEND_OPEN, In.ANSWERED, In.PATH_LOST, In.SEND_OPEN],
    S.ORPHANED: [In.SEND_OPEN, In.ANSWERED, In.SESSION_LOST],
    S.CONTINUING: [In.SEND_OPEN, In.ANSWERED, In.SESSION_LOST, In.SEND_OPEN],
    S.CLOSED: [In.SEND_OPEN, In.ANSWERED, In.COMPLETE],
    S.FAILED: [In.FAIL],
}


def machine_in(state: PathState, *, opener: bool = True) -> StreamMachine:
    m = StreamMachine(opener=opener)
    for ev in ROUTES[state]:
        m.handle(ev)
    assert m.state is state
    return m


def flags_follow(m: StreamMachine) -> None:
    assert m.waiting_answer == (m.state in (S.OPENING, S.RESUMING, S.CONTINUING))
    assert m.ended == (m.state in TERMINAL)
    assert m.clean == (m.state is S.CLOSED)


def test_the_table_is_the_documented_one() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("start", "event"), sorted(EXPECTED, key=str))
def test_every_legal_transition(start: PathState, event: PathInput) -> None:
    m = machine_in(start)
    assert m.handle(event) is EXPECTED[start, event]
    assert m.state is EXPECTED[start, event]
    flags_follow(m)


ILLEGAL = [(s, i) for s in S for i in In if s not in TERMINAL and (s, i) not in EXPECTED]


@pytest.mark.parametrize(("start", "event"), ILLEGAL, ids=str)
def test_illegal_transitions_raise_with_a_code(start: PathState, event: PathInput) -> None:
    m = machine_in(start)
    with pytest.raises(StreamStateError) as exc:
        m.handle(event)
    assert exc.value.code == ErrorCode.PROTOCOL
    assert start.value in str(exc.value)
    assert m.state is start  # nothing changed


@pytest.mark.parametrize("end", sorted(TERMINAL, key=str))
@pytest.mark.parametrize("event", list(In))
def test_an_ended_stream_ignores_late_inputs(end: PathState, event: PathInput) -> None:
    m = machine_in(end)
    assert m.handle(event) is end
    assert not m.fail(ErrorCode.GAP, local=True)
    assert m.code is None


def test_first_failure_wins() -> None:
    m = StreamMachine(opener=True)
    assert m.fail(ErrorCode.GAP, local=True)
    assert not m.fail(ErrorCode.TIMEOUT, local=False)
    assert (m.state, m.code, m.local) == (S.FAILED, ErrorCode.GAP, True)


def test_opener_life_with_a_continuation() -> None:
    m = StreamMachine(opener=True)
    assert m.open_flags() == (False, None)
    m.handle(In.SEND_OPEN)
    assert m.waiting_answer and not m.ever_attached
    m.handle(In.ANSWERED)
    assert m.ever_attached and not m.waiting_answer
    m.handle(In.PATH_LOST)
    assert m.open_flags() == (True, None)  # a resume
    m.handle(In.SEND_OPEN)
    assert m.reset_input(ErrorCode.UNKNOWN_SESSION) is In.SESSION_LOST
    m.lose_session(1234)
    assert m.state is S.ORPHANED
    assert m.open_flags() == (False, 1234)  # a continuation
    m.handle(In.SEND_OPEN)
    m.handle(In.PATH_LOST)  # lost before the answer: still continuing from there
    assert m.open_flags() == (False, 1234)
    m.handle(In.SEND_OPEN)
    m.handle(In.ANSWERED)
    assert m.continue_from is None
    assert m.open_flags() == (False, None)  # (ATTACHED: no OPEN is due)
    m.handle(In.COMPLETE)
    assert m.ended and m.state is S.CLOSED


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (ErrorCode.NO_ERROR, In.COMPLETE),
        (ErrorCode.INTERNAL, In.PATH_LOST),
        (ErrorCode.REFUSED, In.PATH_LOST),
        (ErrorCode.SUPERSEDED, In.PATH_LOST),
        (ErrorCode.GAP, In.FAIL),
        (ErrorCode.PROTOCOL, In.FAIL),
        (ErrorCode.TIMEOUT, In.FAIL),
        (ErrorCode.CANCEL, In.FAIL),
        (ErrorCode.FLOW_CONTROL, In.FAIL),
        (999, In.FAIL),
    ],
)
def test_what_a_reset_means(code: int, expected: PathInput) -> None:
    assert machine_in(S.ATTACHED).reset_input(code) is expected
    assert machine_in(S.ATTACHED, opener=False).reset_input(code) is expected


def test_unknown_session_continues_only_a_session_that_existed() -> None:
    # the opener's session existed at the far end once it answered
    for state in (S.ATTACHED, S.RESUMING, S.CONTINUING):
        assert machine_in(state).reset_input(ErrorCode.UNKNOWN_SESSION) is In.SESSION_LOST
    # never answered, or an acceptor: the stream fails
    assert machine_in(S.OPENING).reset_input(ErrorCode.UNKNOWN_SESSION) is In.FAIL
    assert machine_in(S.ATTACHED, opener=False).reset_input(ErrorCode.UNKNOWN_SESSION) is In.FAIL


def test_application_close_states() -> None:
    assert APP_TRANSITIONS == {
        (AppState.OPEN, AppInput.SEND_EOF): AppState.SEND_CLOSED,
        (AppState.OPEN, AppInput.CLOSE): AppState.CLOSED,
        (AppState.SEND_CLOSED, AppInput.CLOSE): AppState.CLOSED,
    }
    m = StreamMachine(opener=False)
    assert not m.send_closed and not m.app_closed
    assert m.app_input(AppInput.SEND_EOF)
    assert m.send_closed and not m.app_closed
    assert not m.app_input(AppInput.SEND_EOF)
    assert m.app_input(AppInput.CLOSE)
    assert m.send_closed and m.app_closed
    assert not m.app_input(AppInput.CLOSE)
    assert not m.app_input(AppInput.SEND_EOF)
    assert m.app is AppState.CLOSED


@given(st.lists(st.sampled_from(list(In)), max_size=40), st.booleans())
def test_any_sequence_follows_the_table(events: list[PathInput], opener: bool) -> None:
    m = StreamMachine(opener=opener)
    for ev in events:
        before = m.state
        try:
            after = m.handle(ev)
        except StreamStateError as e:
            assert e.code == ErrorCode.PROTOCOL
            assert (before, ev) not in TRANSITIONS and before not in TERMINAL
            assert m.state is before
            continue
        if before in TERMINAL:
            assert after is before
        else:
            assert after is TRANSITIONS[before, ev]
        flags_follow(m)


def test_resume_errors_carry_their_code() -> None:
    assert GapError("x").code == ErrorCode.GAP
    assert ResumeProtocolError("x").code == ErrorCode.PROTOCOL
    assert ResumeError("x").code == ErrorCode.PROTOCOL


def test_backoff_doubles_up_to_its_ceiling_and_resets() -> None:
    b = Backoff(0.05, 0.3)
    assert [b.next() for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    b.reset()
    assert b.next() == 0.05


# ------------------------------------------------------------ session table decisions
@dataclass
class Sess:
    peer_identity: str


SID = b"s" * 16


def directory(owner: str | None = None) -> SessionDirectory[Sess]:
    d: SessionDirectory[Sess] = SessionDirectory(tombstones=2)
    if owner is not None:
        d.sessions[SID] = Sess(owner)
    return d


def test_a_new_session_is_accepted() -> None:
    assert directory().judge(SID, False, "relay-a").verdict is Verdict.NEW


def test_a_resume_attaches_the_known_session() -> None:
    d = directory("relay-a")
    dec = d.judge(SID, True, "relay-a")
    assert dec.verdict is Verdict.ATTACH and dec.session is d.sessions[SID]


def test_a_plain_open_of_a_known_session_from_its_peer_is_a_retry() -> None:
    assert directory("relay-a").judge(SID, False, "relay-a").verdict is Verdict.ATTACH


def test_a_plain_open_of_a_known_session_from_another_peer_is_a_duplicate() -> None:
    dec = directory("relay-a").judge(SID, False, "relay-b")
    assert (dec.verdict, dec.code, dec.reason) == (
        Verdict.REFUSE,
        ErrorCode.REFUSED,
        "duplicate session id",
    )


def test_only_the_opening_peer_may_resume() -> None:
    d = directory("relay-a")
    dec = d.judge(SID, True, "relay-b")
    assert (dec.verdict, dec.code) == (Verdict.REFUSE, ErrorCode.REFUSED)
    assert dec.session is d.sessions[SID]  # named in the log line
    # a session opened over plaintext (no identity) may be resumed by anyone
    assert directory("").judge(SID, True, "relay-b").verdict is Verdict.ATTACH


def test_a_resume_of_an_unknown_session() -> None:
    dec = directory().judge(SID, True, "relay-a")
    assert (dec.verdict, dec.code) == (Verdict.REFUSE, ErrorCode.UNKNOWN_SESSION)


def test_a_finished_session_answers_with_its_tombstone() -> None:
    d = directory("relay-a")
    tomb = Tomb(10, True, ErrorCode.NO_ERROR, "")
    d.finished(SID, tomb)
    assert SID not in d.sessions
    dec = d.judge(SID, True, "relay-a")
    assert (dec.verdict, dec.tomb) == (Verdict.ENDED, tomb)
    dup = d.judge(SID, False, "relay-a")
    assert (dup.verdict, dup.reason) == (Verdict.REFUSE, "duplicate session id")


def test_old_tombstones_go() -> None:
    d = directory()
    for i in range(3):
        d.finished(bytes([i]) * 16, Tomb(0, False, ErrorCode.GAP, "gap"))
    assert d.judge(b"\0" * 16, True, "").verdict is Verdict.REFUSE
    assert d.judge(b"\2" * 16, True, "").verdict is Verdict.ENDED


def test_completion_ends_an_attached_path() -> None:
    m = machine_in(S.ATTACHED)
    assert m.completion(done=False, eof_acked=True) is None
    assert m.completion(done=True, eof_acked=True) == (ErrorCode.NO_ERROR, "done")
    m.app_input(AppInput.CLOSE)  # nobody reads the rest once all we wrote arrived
    assert m.completion(done=False, eof_acked=True) == (
        ErrorCode.CANCEL,
        "closed by the application",
    )
    assert m.completion(done=False, eof_acked=False) is None
    assert machine_in(S.RESUMING).completion(done=True, eof_acked=True) is None


# ------------------------------------------------------------ against the old flags
class OldFlags:
    """The flags resumable.py kept before the state table (the reference)."""

    def __init__(self, opener: bool) -> None:
        self.opener = opener
        self.opening = False
        self.ever_attached = False
        self.continue_from: int | None = None
        self.clean = False
        self.failed = False
        self.path = False  # a current attachment

    def terminal(self) -> bool:
        return self.failed or self.clean

    def fail(self) -> None:
        if not self.failed and not self.clean:
            self.failed = True
        self.path = False

    def step(self, op: str, arg: int) -> None:
        if op == "open":
            self.path, self.opening = True, True
        elif op == "answer":
            self.opening, self.continue_from, self.ever_attached = False, None, True
        elif op == "attach":
            self.path = True
        elif op == "move":
            self.path, self.opening = False, False
        elif op == "finish":
            self.clean, self.path = True, False
        elif op == "fail":
            self.fail()
        else:  # a RESET from the peer
            self.path, self.opening = False, False
            if arg == ErrorCode.NO_ERROR:
                self.clean = True
            elif arg in (ErrorCode.INTERNAL, ErrorCode.REFUSED, ErrorCode.SUPERSEDED):
                pass
            elif arg == ErrorCode.UNKNOWN_SESSION and self.opener and self.ever_attached:
                self.continue_from = 7
            else:
                self.fail()


def new_step(m: StreamMachine, op: str, arg: int) -> None:
    """What the adapter does on each occasion (stream_path.py, resumable.py)."""
    if op == "open":
        m.handle(In.SEND_OPEN)
    elif op == "answer":
        m.handle(In.ANSWERED)
    elif op == "attach":
        m.handle(In.ATTACH)
    elif op == "move":
        m.handle(In.PATH_LOST)
    elif op == "finish":
        m.handle(In.COMPLETE)
    elif op == "fail":
        m.fail(ErrorCode.CANCEL, local=True)
    else:
        event = m.reset_input(arg)
        if event is In.SESSION_LOST:
            m.lose_session(7)
        elif event is In.FAIL:
            m.fail(arg, local=False)
        else:
            m.handle(event)


def allowed(old: OldFlags, op: str) -> bool:
    """The occasions the adapter has: each needs a current path, or none."""
    if old.terminal():
        return op == "fail"
    if op == "open":
        return old.opener and not old.path
    if op == "attach":
        return not old.opener
    if op == "answer":
        return old.opening and old.path
    if op == "finish":
        return old.path and not old.opening
    if op in ("move", "reset"):
        return old.path
    return True  # fail


OPS = st.tuples(
    st.sampled_from(["open", "answer", "attach", "move", "finish", "fail", "reset"]),
    st.sampled_from([int(c) for c in ErrorCode]),
)


@given(st.booleans(), st.lists(OPS, max_size=40))
def test_the_machine_decides_as_the_old_flags_did(opener: bool, ops: list[tuple[str, int]]) -> None:
    old, m = OldFlags(opener), StreamMachine(opener=opener)
    for op, arg in ops:
        if not allowed(old, op):
            continue
        old.step(op, arg)
        new_step(m, op, arg)
        assert m.ended == old.terminal()
        assert m.clean == old.clean
        assert (m.state is S.FAILED) == (old.failed and not old.clean)
        if not m.ended:
            assert m.waiting_answer == old.opening
            resume = old.ever_attached and old.continue_from is None
            if opener and not old.path:  # (an acceptor sends no OPEN)
                assert m.open_flags() == (resume, old.continue_from)


def test_the_replay_pool_and_the_mux_share_one_budget() -> None:
    pool = ReplayPool(100, 10)
    assert isinstance(pool, Budget)
    pool.take(120)
    assert (pool.free, pool.available()) == (-20, 0)

    class Waiter:
        woken = 0

        def _notify(self) -> None:
            Waiter.woken += 1

    for _ in range(3):
        pool.enqueue(Waiter())
    pool.give(25)  # about one waiter per reserve's worth freed
    assert (pool.used, Waiter.woken, len(pool.waiting)) == (95, 2, 1)
    assert isinstance(Mux(client=True, now=0)._budget, Budget)
