"""The sans-IO liveness table: identity deadline, idle probe, probe answer, bounded heap."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from common.proto.telnet.codec import DO, TIMING_MARK, WILL, WONT, negotiate
from vspc.core.esx_session import EsxSession
from vspc.core.liveness import Due, LivenessPolicy, LivenessTable

POLICY = LivenessPolicy(identify_timeout=10.0, idle_probe=60.0, probe_timeout=5.0)


def table() -> LivenessTable:
    return LivenessTable(POLICY)


def test_identify_timeout_unless_identified() -> None:
    t = table()
    t.opened("slow", 0.0)
    t.opened("esx", 0.0)
    t.identified("esx")
    assert t.next_deadline() == 10.0
    assert t.tick(9.9) == []
    assert t.tick(10.0) == [("slow", Due.IDENTIFY_TIMEOUT)]


def test_idle_probe_then_dead_without_answer() -> None:
    t = table()
    t.opened("c", 0.0)
    t.identified("c")
    assert t.tick(59.0) == []
    assert t.tick(60.0) == [("c", Due.PROBE)]
    assert t.next_deadline() == 65.0
    assert t.tick(65.0) == [("c", Due.DEAD)]
    assert t.tick(1000.0) == []  # reported once; the adapter closes it


def test_any_bytes_answer_the_probe_and_move_the_idle_deadline() -> None:
    t = table()
    rec = t.opened("c", 0.0)
    t.identified("c")
    assert not rec.heard(30.0)  # no probe out: just activity
    assert t.tick(60.0) == []  # idle deadline moved to 90
    assert t.tick(90.0) == [("c", Due.PROBE)]
    assert rec.heard(91.0)  # the answer
    assert rec.answered == 1
    t.answered("c")  # (the probe's own deadline entry is stale now)
    assert t.tick(95.0) == []
    assert t.tick(150.9) == []
    assert t.tick(151.0) == [("c", Due.PROBE)]


def test_probe_on_demand_once_while_out() -> None:
    t = table()
    rec = t.opened("c", 0.0)
    t.identified("c")
    assert t.probe("c", 1.0)
    assert not t.probe("c", 2.0)  # one is already out
    assert t.next_deadline() == 6.0
    rec.heard(3.0)
    assert t.tick(6.0) == []
    assert t.probe("c", 7.0)
    assert t.tick(12.0) == [("c", Due.DEAD)]
    t.spare("c", 12.0)  # the adapter found it there after all
    assert t.tick(71.9) == []
    assert t.tick(72.0) == [("c", Due.PROBE)]


def test_closed_connections_are_forgotten() -> None:
    t = table()
    for i in range(1000):
        t.opened(i, float(i))
        t.closed(i)
    assert len(t) == 0
    assert len(t._heap) <= 64 + 1
    assert t.tick(1e9) == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["open", "close", "heard", "probe", "ident", "tick"]),
            st.integers(0, 20),
            st.floats(0, 30),
        ),
        max_size=200,
    )
)
def test_heap_stays_proportional_to_open_connections(ops: list[tuple[str, int, float]]) -> None:
    t = table()
    now = 0.0
    for op, c, dt in ops:
        now += dt
        if op == "open" and t.get(c) is None:
            t.opened(c, now)
        elif op == "close":
            t.closed(c)
        elif op == "heard" and (rec := t.get(c)) is not None:
            rec.heard(now)
        elif op == "probe":
            t.probe(c, now)
        elif op == "ident":
            t.identified(c)
        elif op == "tick":
            for conn, due in t.tick(now):
                if due is not Due.PROBE:
                    t.closed(conn)
        assert len(t._heap) <= 3 * len(t) + 65
        d = t.next_deadline()
        assert d is None or d >= 0


def test_session_probe_and_its_answers() -> None:
    s = EsxSession()
    s.initial_bytes()
    assert s.probe() == negotiate(DO, TIMING_MARK)
    for verb in (WILL, WONT):
        s.receive_data(negotiate(verb, TIMING_MARK) + b"x")
        assert s.data_to_send() == b""  # never re-negotiated
        assert [type(e).__name__ for e in s.next_events()] == ["ConsoleData"]
